"""GenerationService: unary, server-streaming and bidirectional generation.

The streaming RPCs relay their backend's events through `coalesced` (genmesh.runtime.streams): the
next backend read overlaps the client write in flight, and text deltas the client is slow to take
go out merged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from genmesh.router.dispatch import Context, Dispatcher, Relay, Routed, new_turn_id, translate
from genmesh.router.voice import VoiceConversation
from genmesh.runtime import errors
from genmesh.runtime.channel import stream_end
from genmesh.runtime.errors import FieldViolation
from genmesh.runtime.streams import coalesced
from genmesh.v1 import common_pb2, generation_pb2, generation_pb2_grpc, inference_pb2


class GenerationService(generation_pb2_grpc.GenerationServiceServicer):
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    async def Generate(  # noqa: N802 - gRPC method name
        self, request: common_pb2.GenerateRequest, context: Context
    ) -> common_pb2.GenerateResponse:
        relay = self.dispatcher.relay(self.dispatcher.resolve(request), context)
        final = await relay.result()
        context.set_trailing_metadata(relay.trailing_metadata())
        return final

    async def GenerateStream(  # noqa: N802
        self, request: generation_pb2.GenerateStreamRequest, context: Context
    ) -> AsyncIterator[generation_pb2.GenerateStreamResponse]:
        relay = self.dispatcher.relay(self.dispatcher.resolve(request.request), context)
        request_id = relay.request.request_id
        async for event in coalesced(relay):
            if event.HasField("final"):
                # The per-token logprobs came in the deltas: the streamed final leaves them out.
                for output in event.final.outputs:
                    del output.logprobs[:]
            yield generation_pb2.GenerateStreamResponse(request_id=request_id, event=event)
        context.set_trailing_metadata(relay.trailing_metadata())

    async def Converse(  # noqa: N802
        self, request_iterator: AsyncIterator[generation_pb2.ConverseRequest], context: Context
    ) -> AsyncIterator[generation_pb2.ConverseResponse]:
        first = await anext(request_iterator, None)
        kind = first.WhichOneof("message") if first is not None else None
        if first is not None and kind == "voice":
            voice = VoiceConversation(self.dispatcher, first.voice, context)
            context.set_trailing_metadata((("x-request-id", voice.request_id),))
            async with contextlib.aclosing(voice.run(request_iterator)) as spoken:
                async for response in spoken:
                    yield response
            return
        if first is None or kind != "config":
            raise errors.invalid_argument(
                "a conversation starts with a config message",
                FieldViolation(
                    "config", "must be the first message (voice for a voice conversation)"
                ),
            )
        if first.config.text.raw_prompt:
            raise errors.invalid_argument(
                "a conversation is a chat",
                FieldViolation("config.text.raw_prompt", "its turns need the chat template"),
            )
        routed = self.dispatcher.resolve(first.config, needs_inputs=False)
        context.set_trailing_metadata((("x-request-id", routed.request.request_id),))
        conversation: AsyncIterator[generation_pb2.ConverseResponse]
        if routed.route is not None and routed.request.task == common_pb2.TASK_TRANSCRIPTION:
            conversation = self._transcribe(routed, request_iterator, context)
        else:
            conversation = Conversation(self.dispatcher, routed, context).run(request_iterator)
        async for response in conversation:
            yield response

    async def _transcribe(
        self,
        routed: Routed,
        requests: AsyncIterator[generation_pb2.ConverseRequest],
        context: Context,
    ) -> AsyncIterator[generation_pb2.ConverseResponse]:
        """Audio streamed in, transcripts streamed out, on one backend stream."""
        route = routed.route
        assert route is not None
        request_id = routed.request.request_id
        async with route.slots.slot():
            call = route.pick().stub.Infer(timeout=context.time_remaining())
            refused: list[errors.ServiceError] = []

            async def forward() -> None:
                """Relays the audio; a client message that is refused (one that does not parse)
                ends the backend call, and the conversation with that refusal."""
                await call.write(inference_pb2.InferRequest(request=routed.request))
                try:
                    async for message in requests:
                        kind = message.WhichOneof("message")
                        if kind == "audio":
                            await call.write(inference_pb2.InferRequest(audio=message.audio))
                        elif kind == "control":
                            await call.write(inference_pb2.InferRequest(control=message.control))
                except errors.ServiceError as exc:
                    refused.append(exc)
                    call.cancel()
                    return
                await call.done_writing()

            writer = asyncio.ensure_future(forward())
            try:
                async for response in call:
                    yield generation_pb2.ConverseResponse(
                        request_id=request_id, event=response.event
                    )
            except (grpc.aio.AioRpcError, asyncio.CancelledError) as error:
                failed = await stream_end(call, error, refused)
                if failed is not None:
                    raise translate(failed, route) from None
            finally:
                writer.cancel()
                call.cancel()


class Conversation:
    """A text conversation: the router keeps the history and runs one generation per turn."""

    def __init__(self, dispatcher: Dispatcher, routed: Routed, context: Context) -> None:
        self.dispatcher = dispatcher
        self.routed = routed
        self.context = context
        self.history = list(routed.request.inputs)
        self.turns: asyncio.Queue[generation_pb2.ConverseTurn | None] = asyncio.Queue()
        self.cancel = asyncio.Event()

    async def _read(self, requests: AsyncIterator[generation_pb2.ConverseRequest]) -> None:
        """Queues the turns; the end of the queue, however reading ends (a refused message
        too), lets `run` finish and raise the reader's error."""
        try:
            async for message in requests:
                kind = message.WhichOneof("message")
                if kind == "turn":
                    await self.turns.put(message.turn)
                elif (
                    kind == "control" and message.control.action == common_pb2.Control.ACTION_CANCEL
                ):
                    self.cancel.set()
                elif kind in ("audio", "config"):
                    raise errors.invalid_argument(
                        f"unexpected {kind} message in a text conversation",
                        FieldViolation(kind, "only turns and controls may follow the config"),
                    )
        finally:
            self.turns.put_nowait(None)

    async def run(
        self, requests: AsyncIterator[generation_pb2.ConverseRequest]
    ) -> AsyncIterator[generation_pb2.ConverseResponse]:
        reader = asyncio.ensure_future(self._read(requests))
        try:
            while (turn := await self.turns.get()) is not None:
                async for response in self._turn(turn):
                    yield response
            await reader
        finally:
            reader.cancel()

    async def _turn(
        self, turn: generation_pb2.ConverseTurn
    ) -> AsyncIterator[generation_pb2.ConverseResponse]:
        turn_id = new_turn_id(turn.turn_id)
        request, relay = self.dispatcher.turn(
            self.routed, [*self.history, *turn.inputs], self.context
        )
        if isinstance(relay, Relay):
            relay.interactive = True
        self.cancel.clear()
        events = aiter(coalesced(relay))
        reply: list[str] = []
        calls: list[common_pb2.ToolCall] = []

        def respond(event: common_pb2.StreamEvent) -> generation_pb2.ConverseResponse:
            return generation_pb2.ConverseResponse(
                request_id=request.request_id, turn_id=turn_id, event=event
            )

        following: asyncio.Future[Any] | None = None
        while True:
            if following is None:
                following = asyncio.ensure_future(anext(events, None))
            cancelled = asyncio.ensure_future(self.cancel.wait())
            done, _ = await asyncio.wait(
                {following, cancelled}, return_when=asyncio.FIRST_COMPLETED
            )
            cancelled.cancel()
            if following not in done:
                self.cancel.clear()
                if isinstance(relay, Relay) and await relay.cancel():
                    continue  # the backend ends the turn with its own final message
                following.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await following
                final = common_pb2.GenerateResponse(
                    request_id=request.request_id,
                    binding=request.binding,
                    model=request.model,
                    finish_reason=common_pb2.FINISH_REASON_CANCELLED,
                    outputs=[
                        common_pb2.OutputItem(
                            kind=common_pb2.CONTENT_KIND_TEXT, text="".join(reply)
                        )
                    ],
                )
                relay.finish(final)
                yield respond(common_pb2.StreamEvent(final=final))
                break
            event, following = following.result(), None
            if event is None:
                break
            if event.HasField("text_delta") and event.text_delta.index == 0:
                reply.append(event.text_delta.text)
            if event.HasField("final") and event.final.outputs:
                calls[:] = event.final.outputs[0].tool_calls
            yield respond(event)
        self.history.extend(turn.inputs)
        self.history.append(
            common_pb2.InputItem(
                kind=common_pb2.CONTENT_KIND_TEXT,
                role=common_pb2.INPUT_ROLE_ASSISTANT_REPLY,
                text="".join(reply),
                tool_calls=calls,  # the assistant's calls, which the next turn's results answer
            )
        )
