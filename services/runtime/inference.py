"""The Infer stream every InferenceService serves alike, as a skeleton around one modality's job.

A servicer turns the opening request into an `InferJob` (parsing and validating it, so bad input
fails before any queueing); `serve_infer` does the rest: admission through the job's bounded,
timed queue, the in-band cancel and the deadline handed to the job as a `Stop`, the events, the
final message with its finish reason, the trailers (request_id, timings) and the "generation
ended" log event. The call's own cancellation (client gone, gRPC deadline passed) reaches the job
as the closing of its event stream.

Deadlines: the gRPC deadline is the request's deadline (the router passes the client's on as its
call's timeout). Shortly before it passes, the job is stopped, so the stream still stands for a
final message that keeps the partial output with `FINISH_REASON_DEADLINE`, as a length limit
would; only when the deadline passes before that final is sent does the call end
DEADLINE_EXCEEDED. An engine failing part-way ends with `FINISH_REASON_ERROR`: the output so far
is kept and an Info event before the final says what failed. A `ServiceError` is the job's
deliberate, coded answer (bad streamed input, a full queue) and ends the call with its status.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc

from genmesh.runtime import errors, telemetry
from genmesh.runtime.errors import FieldViolation, ServiceError
from genmesh.runtime.limiter import Slots
from genmesh.runtime.streams import coalesced
from genmesh.runtime.timing import Stopwatch
from genmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
Requests = AsyncIterator[inference_pb2.InferRequest]
FinishReason: TypeAlias = common_pb2.FinishReason.ValueType

#: Share of the time left at arrival kept to deliver the final message before the deadline,
#: within these bounds (seconds): enough for a hop or two on a busy host, little of a long budget.
DEADLINE_SHARE = 0.1
MIN_DEADLINE_MARGIN_S = 0.05
MAX_DEADLINE_MARGIN_S = 1.0
#: Events that count as output for the time to first token (progress and info do not).
OUTPUT_EVENTS = frozenset(
    {"text_delta", "tool_call_delta", "audio_chunk", "image_preview", "transcript"}
)
_MAX_ERROR_CHARS = 300
_OUTCOMES = {
    common_pb2.FINISH_REASON_CANCELLED: "cancelled",
    common_pb2.FINISH_REASON_DEADLINE: "deadline",
    common_pb2.FINISH_REASON_ERROR: "error",
}


class Stop:
    """Whether, and why, a job should end early: an in-band cancel or the deadline. Engines that
    block in worker threads check `flag` between steps; async code awaits `wait()`."""

    def __init__(self) -> None:
        self.reason: FinishReason | None = None
        self.flag = threading.Event()
        self._event = asyncio.Event()

    def set(self, reason: FinishReason) -> None:
        """Called on the event loop; the first reason wins."""
        if self.reason is None:
            self.reason = reason
        self.flag.set()
        self._event.set()

    def __bool__(self) -> bool:
        return self.flag.is_set()

    async def wait(self) -> None:
        await self._event.wait()


class InferJob(abc.ABC):
    """One validated request of a modality. Its events end early once `stop` is set (checked
    between tokens, steps, sentences or segments); `result` then holds the partial output."""

    #: The model serving the request, named in the final message and the log.
    model: str
    #: Where the job queues for the whole of its run; None when it admits each unit of its work
    #: itself (a live transcription session).
    slots: Slots | None = None
    #: True when the job reads the rest of the Infer stream itself (streamed audio) and so sees
    #: an in-band cancel there; otherwise the skeleton watches the stream for it.
    reads_input = False
    #: Events after which the time to first output is taken.
    output_events: frozenset[str] = OUTPUT_EVENTS

    @abc.abstractmethod
    def events(self, stop: Stop) -> AsyncGenerator[common_pb2.StreamEvent, None]:
        """The events before the final one."""

    @abc.abstractmethod
    async def result(self) -> common_pb2.GenerateResponse:
        """The outputs so far and usage; `finish_reason` set only when the job ended by itself
        (the skeleton fills in a stop, a failure or a plain STOP)."""

    def summary(self) -> dict[str, Any]:
        """Figures for the "generation ended" log event."""
        return {}

    def stages(self) -> dict[str, float]:
        """The stages of the time to first output the job measured, in seconds, by their
        Timings field names (`input_processing`, `prefill`)."""
        return {}


Prepare = Callable[[common_pb2.GenerateRequest, Requests], Awaitable[InferJob]]


async def first_request(requests: Requests) -> common_pb2.GenerateRequest:
    """The opening message of an Infer stream, which must carry the request."""
    first = await anext(requests, None)
    if first is None or first.WhichOneof("message") != "request":
        raise errors.invalid_argument(
            "the first Infer message must be a request",
            FieldViolation("request", "must be set on the first message"),
        )
    return first.request


def is_cancel(message: inference_pb2.InferRequest) -> bool:
    return message.WhichOneof("message") == "control" and (
        message.control.action == common_pb2.Control.ACTION_CANCEL
    )


async def watch_cancel(requests: Requests, stop: Stop) -> None:
    """Stops the job when the caller sends Control CANCEL."""
    async for message in requests:
        if is_cancel(message):
            stop.set(common_pb2.FINISH_REASON_CANCELLED)
            return


def stop_at_deadline(context: Context, stop: Stop) -> asyncio.TimerHandle | None:
    """Schedules the deadline's stop, leaving the margin to send the final message."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    margin = min(MAX_DEADLINE_MARGIN_S, max(MIN_DEADLINE_MARGIN_S, remaining * DEADLINE_SHARE))
    return asyncio.get_running_loop().call_later(
        max(0.0, remaining - margin), stop.set, common_pb2.FINISH_REASON_DEADLINE
    )


def response(request_id: str, **event: Any) -> inference_pb2.InferResponse:
    return inference_pb2.InferResponse(request_id=request_id, event=common_pb2.StreamEvent(**event))


def failure_info(exc: BaseException) -> common_pb2.Info:
    """What an engine failure tells the client: the exception's type and text, never a trace."""
    text = f"the engine failed part-way: {type(exc).__name__}: {exc}"
    info = common_pb2.Info(message=text[:_MAX_ERROR_CHARS])
    info.details.update({"reason": "ENGINE_FAILED", "error": type(exc).__name__})
    return info


async def serve_infer(
    requests: Requests, context: Context, prepare: Prepare
) -> AsyncGenerator[inference_pb2.InferResponse, None]:
    """Runs one Infer stream: `prepare` turns the opening request into the modality's job."""
    clock = Stopwatch()
    request = await first_request(requests)
    rid = request.request_id
    context.set_trailing_metadata((("x-request-id", rid),))
    job = await prepare(request, requests)
    stop = Stop()
    watcher = None if job.reads_input else asyncio.ensure_future(watch_cancel(requests, stop))
    timer = stop_at_deadline(context, stop)
    failure: BaseException | None = None
    outcome = "failed"
    try:
        async with job.slots.slot() if job.slots else contextlib.nullcontext(0.0):
            clock.dequeued()
            events = coalesced(job.events(stop))
            try:
                async for event in events:
                    if event.WhichOneof("event") in job.output_events:
                        clock.first_output()
                    yield inference_pb2.InferResponse(request_id=rid, event=event)
            except ServiceError:
                raise
            except Exception as exc:  # an engine failing part-way: the client keeps what it got
                log.exception("engine failed", extra={"fields": {"request_id": rid}})
                failure = exc
            finally:
                with contextlib.suppress(Exception):
                    await events.aclose()
        final = await job.result()
        if failure is not None:
            final.finish_reason = common_pb2.FINISH_REASON_ERROR
            yield response(rid, info=failure_info(failure))
        elif not final.finish_reason:
            final.finish_reason = stop.reason or common_pb2.FINISH_REASON_STOP
        outcome = _OUTCOMES.get(final.finish_reason, "completed")
    except (asyncio.CancelledError, GeneratorExit):
        # GeneratorExit: the call ended while this stream waited for the client to read.
        outcome = "cancelled by client or deadline"
        raise
    except ServiceError:
        outcome = "refused"
        raise
    finally:
        if watcher is not None:
            watcher.cancel()
        if timer is not None:
            timer.cancel()
        fields = {"request_id": rid, "model": job.model, "outcome": outcome, **job.summary()}
        telemetry.event(log, "generation ended", **fields)
    final.request_id = rid
    final.model = final.model or job.model
    final.timings.CopyFrom(clock.timings(stages=job.stages()))
    context.set_trailing_metadata((("x-request-id", rid), *clock.metadata()))
    yield response(rid, final=final)


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer, abc.ABC):
    """An InferenceService whose Infer is the skeleton: a modality only says, in `job`, what a
    request becomes (validating it on the way)."""

    async def Infer(  # noqa: N802 - gRPC method name
        self, request_iterator: Requests, context: Context
    ) -> AsyncIterator[inference_pb2.InferResponse]:
        # Closed here, not later by the garbage collector: the call ends once the engine stopped.
        async with contextlib.aclosing(serve_infer(request_iterator, context, self.job)) as served:
            async for message in served:
                yield message

    async def Generate(  # noqa: N802 - gRPC method name
        self, request: inference_pb2.InferenceServiceGenerateRequest, context: Context
    ) -> inference_pb2.InferenceServiceGenerateResponse:
        """Infer with nothing after the request, its final event the answer."""

        async def opening() -> Requests:
            yield inference_pb2.InferRequest(request=request.request)

        answer = inference_pb2.InferenceServiceGenerateResponse()
        async with contextlib.aclosing(serve_infer(opening(), context, self.job)) as served:
            async for message in served:
                if message.event.HasField("final"):
                    answer.response.CopyFrom(message.event.final)
        return answer

    @abc.abstractmethod
    async def job(self, request: common_pb2.GenerateRequest, requests: Requests) -> InferJob:
        """The job for an opening request; `requests` is the rest of the stream."""

    async def Embed(  # noqa: N802 - gRPC method name
        self, request: inference_pb2.InferenceServiceEmbedRequest, context: Context
    ) -> inference_pb2.InferenceServiceEmbedResponse:
        """Only text services hold embedding models; the others say so."""
        raise ServiceError(
            grpc.StatusCode.UNIMPLEMENTED,
            "this service has no embedding models",
            reason="EMBEDDING_UNAVAILABLE",
        )
