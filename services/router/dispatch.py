"""Resolving public requests to a binding (or a scripted personality) and relaying the result.

Resolution merges parameters in the order binding defaults → personality → request (repeated
fields such as stop sequences accumulate, so a personality's anti-prompts join the request's
stops) and puts the personality's conditioning first among the system context.

The relay waits for a slot of the binding (its concurrency limit and bounded queue), forwards
deadlines (as the backend call's timeout) and cancellation (closing the relay cancels the
backend call, which stops the engine), and retries once on another replica when a replica is
unavailable before it produced anything (or at any point when the caller only wants the final
result). A stream cut after output was relayed ends with UNAVAILABLE carrying the partial usage.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import grpc
from google.protobuf import struct_pb2

from genmesh.router import validation
from genmesh.router.backends import (
    Backends,
    BindingRoute,
    InferCall,
    Replica,
    cancel_in_band,
    send_request,
)
from genmesh.router.inputs import InputResolver
from genmesh.router.personalities import Personalities, Personality
from genmesh.router.scripted import ScriptRun, ScriptRunner
from genmesh.router.settings import PARAMETER_FIELDS, parameters_message
from genmesh.router.source import EventSource
from genmesh.runtime import errors
from genmesh.runtime.channel import peer_error
from genmesh.runtime.errors import FieldViolation, ServiceError
from genmesh.runtime.timing import duration
from genmesh.v1 import common_pb2, inference_pb2

Context = grpc.aio.ServicerContext[Any, Any]
# The stages of the time to first token a service measures, passed on as it reports them.
SERVICE_STAGES: tuple[Literal["input_processing", "prefill"], ...] = ("input_processing", "prefill")


@dataclass
class Routed:
    """A resolved request: to a binding, or (route None) to a scripted personality."""

    route: BindingRoute | None
    request: common_pb2.GenerateRequest
    personality: Personality | None = None


def translate(error: grpc.aio.AioRpcError, route: BindingRoute) -> ServiceError:
    """A backend failure as the client should see it."""
    code = error.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return errors.unavailable(
            f"binding '{route.name}' is unavailable: {error.details()}", binding=route.name
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.deadline_exceeded("the deadline passed before generation finished")
    return errors.from_rpc_error(error)


def task_name(task: int) -> str:
    return common_pb2.Task.Name(task)  # type: ignore[arg-type]


def merge_parameters(
    request: common_pb2.GenerateRequest, route: BindingRoute, personality: Personality | None
) -> None:
    """Fills the request's parameters: binding defaults, then personality, then request."""
    field = PARAMETER_FIELDS[request.task]
    given = request.WhichOneof("parameters")
    if given and given != field:
        raise errors.invalid_argument(
            f"{given} parameters do not apply to {task_name(request.task)}",
            FieldViolation(given, f"use '{field}' parameters for this task"),
        )
    merged = parameters_message(request.task, route.config.parameters)
    if personality is not None:
        _overlay(merged, personality.text_parameters())
    if given:
        _overlay(merged, getattr(request, field))
    getattr(request, field).CopyFrom(merged)
    if route.config.extra:
        extra = struct_pb2.Struct()
        extra.update(route.config.extra)
        extra.MergeFrom(request.extra)
        request.extra.CopyFrom(extra)


def _overlay(merged: Any, later: Any) -> None:
    """`later`'s parameters over `merged`'s. A text constraint, tool choice, tool list or logit
    bias is replaced whole: merged field by field it would make a schema of two levels' keys,
    offer a tool twice, or bias tokens the request did not name."""
    merged.MergeFrom(later)
    if isinstance(later, common_pb2.TextParameters):
        if later.HasField("constraint"):
            merged.constraint.CopyFrom(later.constraint)
        if later.HasField("tool_choice"):
            merged.tool_choice.CopyFrom(later.tool_choice)
        if later.tools:
            del merged.tools[:]
            merged.tools.extend(later.tools)
        if later.logit_bias:
            merged.logit_bias.clear()
            merged.logit_bias.update(later.logit_bias)


class Dispatcher:
    def __init__(
        self,
        backends: Backends,
        max_request_bytes: int,
        personalities: Personalities | None = None,
        inputs: InputResolver | None = None,
    ) -> None:
        self.backends = backends
        self.max_request_bytes = max_request_bytes
        self.inputs = inputs or InputResolver(max_request_bytes=max_request_bytes)
        self.personalities = personalities or Personalities()
        # Set once the AgentService exists (it calls back into this dispatcher).
        self.scripts: ScriptRunner | None = None

    def resolve(self, request: common_pb2.GenerateRequest, needs_inputs: bool = True) -> Routed:
        resolved = common_pb2.GenerateRequest()
        resolved.CopyFrom(request)
        resolved.request_id = validation.request_id(request.request_id)
        validation.names(
            binding=resolved.binding, personality=resolved.personality, model=resolved.model
        )
        validation.task(resolved.task)
        personality = self.personalities.get(resolved.personality) if resolved.personality else None
        if personality is not None and resolved.text.raw_prompt:
            raise errors.invalid_argument(
                "a raw prompt takes no personality",
                FieldViolation("personality", "its conditioning needs the chat template"),
            )
        if personality is not None and personality.scripted:
            validation.check_request(resolved, self.max_request_bytes, needs_inputs)
            return Routed(None, resolved, personality)
        binding = resolved.binding or (personality.config.binding if personality else "")
        if binding:
            route = self.backends.get(binding)
        else:
            route = self.backends.default_for(resolved.task or common_pb2.TASK_TEXT)
        if resolved.task == common_pb2.TASK_UNSPECIFIED:
            resolved.task = route.tasks[0]
        elif resolved.task not in route.tasks:
            served = ", ".join(task_name(t) for t in route.tasks)
            raise errors.invalid_argument(
                f"binding '{route.name}' does not serve {task_name(resolved.task)}",
                FieldViolation("task", f"binding '{route.name}' serves {served}"),
            )
        if personality is not None and resolved.task != common_pb2.TASK_TEXT:
            raise errors.invalid_argument(
                f"personality '{personality.key}' applies to text generation only",
                FieldViolation("personality", "use it with TASK_TEXT"),
            )
        merge_parameters(resolved, route, personality)
        conditioning = personality.conditioning() if personality else None
        if conditioning is not None:
            resolved.inputs.insert(0, conditioning)
        resolved.binding = route.name
        resolved.model = (
            resolved.model
            or (personality.config.model if personality else "")
            or route.config.model
        )
        validation.check_request(resolved, self.max_request_bytes, needs_inputs)
        return Routed(route, resolved, personality)

    def source(self, routed: Routed, timeout: float | None) -> EventSource:
        if routed.route is not None:
            return Relay(routed.route, routed.request, timeout, self.inputs)
        assert routed.personality is not None
        if self.scripts is None:
            raise errors.unavailable("scripted personalities need the sandbox service")
        return ScriptRun(routed.personality, routed.request, self.scripts, timeout)

    def relay(self, routed: Routed, context: Context) -> EventSource:
        return self.source(routed, context.time_remaining())

    def turn(
        self, routed: Routed, inputs: list[common_pb2.InputItem], context: Context
    ) -> tuple[common_pb2.GenerateRequest, EventSource]:
        """A conversation's next generation: its template with `inputs` (the history so far and
        the new turn) in place of the template's own, checked and routed."""
        request = common_pb2.GenerateRequest()
        request.CopyFrom(routed.request)
        del request.inputs[:]
        request.inputs.extend(inputs)
        validation.check_request(request, self.max_request_bytes)
        return request, self.relay(Routed(routed.route, request, routed.personality), context)

    async def generate(
        self, request: common_pb2.GenerateRequest, timeout: float | None = None
    ) -> common_pb2.GenerateResponse:
        """A whole generation in-process (for sandbox programs' mesh functions)."""
        return await self.source(self.resolve(request), timeout).result()


class Relay(EventSource):
    """One request's backend stream, after a slot of the binding is free."""

    def __init__(
        self,
        route: BindingRoute,
        request: common_pb2.GenerateRequest,
        timeout: float | None,
        inputs: InputResolver,
    ) -> None:
        super().__init__(request)
        self.route = route
        # Each backend call gets what is left of the caller's time, after queueing or a retry.
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.inputs = inputs
        # True when the caller may cancel in-band (a conversation turn).
        self.interactive = False
        self.call: InferCall | None = None
        self.deltas = 0
        self.chars = 0

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def open(self, replica: Replica) -> InferCall:
        self.call = replica.stub.Infer(timeout=self.remaining())
        return self.call

    async def cancel(self) -> bool:
        """Ends the generation in-band: the backend's final message follows on this stream."""
        return self.call is not None and await cancel_in_band(self.call)

    async def result(self) -> common_pb2.GenerateResponse:
        """The whole generation in one call (InferenceService.Generate): one message each way
        instead of a stream to read."""
        answer = await self.whole()
        if answer is None:  # a service of an earlier version, mid-upgrade: it only streams
            return await super().result()
        if not answer.HasField("response"):
            raise errors.unavailable("the generation ended without a result")
        final = answer.response
        backend = final.timings
        if backend.HasField("first_token"):
            # The backend's first output as the router would have seen it on a stream.
            after_first = backend.total.ToTimedelta() - backend.first_token.ToTimedelta()
            since = self.clock.elapsed() - after_first.total_seconds()
            self.clock.first_token_s = max(self.clock.queue_s, since)
        self.finish(final)
        return final

    async def whole(self) -> inference_pb2.InferenceServiceGenerateResponse | None:
        """InferenceService.Generate's answer (from another replica if the first is down), or
        None from a service without that RPC."""
        route = self.route
        await self.inputs.resolve(self.request)
        async with route.slots.slot():
            self.clock.dequeued()
            request = inference_pb2.InferenceServiceGenerateRequest(request=self.request)
            exclude: Replica | None = None
            for attempt in range(2):
                replica = route.pick(exclude)
                try:
                    answer = await replica.stub.Generate(request, timeout=self.remaining())
                    break
                except grpc.aio.AioRpcError as error:
                    if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                        return None
                    if not self.retried(error, replica, attempt, started=False):
                        raise translate(error, route) from None
                    exclude = replica
        return answer

    async def __aiter__(self) -> AsyncIterator[common_pb2.StreamEvent]:
        route = self.route
        await self.inputs.resolve(self.request)
        async with route.slots.slot():
            self.clock.dequeued()
            exclude: Replica | None = None
            for attempt in range(2):
                replica = route.pick(exclude)
                call = self.open(replica)
                started = False
                self.deltas = self.chars = 0
                try:
                    await send_request(call, self.request, self.interactive)
                    async for response in call:
                        started = True
                        event = response.event
                        if event.HasField("final"):
                            self.finish(event.final)
                        else:
                            self.clock.first_output()
                            self.count(event)
                        yield event
                    return
                except grpc.aio.AioRpcError as failed:
                    error = await peer_error(call, failed)
                    if error is None:  # it ended well; only a late in-band cancel failed
                        return
                    if self.retried(error, replica, attempt, started):
                        exclude = replica
                        continue
                    if error.code() == grpc.StatusCode.UNAVAILABLE and started:
                        raise self.interrupted(error) from None
                    raise translate(error, route) from None
                finally:
                    call.cancel()

    def retried(
        self, error: grpc.aio.AioRpcError, replica: Replica, attempt: int, started: bool
    ) -> bool:
        """Whether a failed attempt goes to another replica: only when `replica` is down (now
        marked so), on the first attempt, before any output, and when there is another."""
        unavailable = error.code() == grpc.StatusCode.UNAVAILABLE
        if unavailable:
            replica.mark_down()
        return unavailable and attempt == 0 and len(self.route.replicas) > 1 and not started

    def count(self, event: common_pb2.StreamEvent) -> None:
        if event.HasField("text_delta"):
            self.deltas += 1
            self.chars += len(event.text_delta.text) + len(event.text_delta.thoughts)
        elif event.HasField("audio_chunk") or event.HasField("progress"):
            self.deltas += 1

    def interrupted(self, error: grpc.aio.AioRpcError) -> ServiceError:
        """The stream broke after output went out: UNAVAILABLE with what was produced."""
        return errors.unavailable(
            f"binding '{self.route.name}' failed mid-stream: {error.details()}",
            reason="STREAM_INTERRUPTED",
            binding=self.route.name,
            request_id=self.request.request_id,
            deltas=str(self.deltas),
            output_chars=str(self.chars),
        )

    def finish(self, final: common_pb2.GenerateResponse) -> None:
        final.request_id = self.request.request_id
        final.binding = self.route.name
        backend = final.timings
        stages: dict[str, float] = {
            name: getattr(backend, name).ToTimedelta().total_seconds()
            for name in SERVICE_STAGES
            if backend.HasField(name)
        }
        if self.clock.first_token_s is not None and backend.HasField("first_token"):
            backend_first = backend.first_token.ToTimedelta().total_seconds()
            routing = self.clock.first_token_s - self.clock.queue_s - backend_first
            stages["routing"] = max(0.0, routing)
        backend_queue = backend.queue.ToTimedelta().total_seconds()
        final.timings.CopyFrom(self.clock.timings(extra_queue_s=backend_queue, stages=stages))
        if self.clock.first_token_s is None:
            final.timings.first_token.CopyFrom(duration(self.clock.elapsed()))


def new_turn_id(value: str) -> str:
    return value or uuid.uuid4().hex[:12]
