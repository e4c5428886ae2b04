"""Voice conversations on Converse: speech in, the reply spoken back, sentence by sentence.

The client's audio goes on to the transcription binding as a live recognition stream that reports
voice activity; each utterance it settles becomes a user turn. The reply streams from the chat
binding, is cut into sentences as it is written, and each sentence is synthesised by the speech
binding as soon as it ends, so the first sentence plays while the model is still writing. All of
it goes out on one queue in the order it happens, each event tagged with its turn.

Speech that starts while a reply is being made or played cancels it (barge-in): the reply's task
is cancelled, which closes its backend streams and so stops the model and the voice. The history
keeps what the client had begun to play by then, taking it to play each chunk on arrival, right
after the one before (`Playback`). Closing the conversation cancels every task the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from genmesh.audio.sentences import SentenceStream
from genmesh.router.backends import BindingRoute, InferCall
from genmesh.router.dispatch import Context, Dispatcher, Routed, new_turn_id, translate
from genmesh.router.source import EventSource
from genmesh.runtime import errors, telemetry
from genmesh.runtime.channel import peer_error
from genmesh.runtime.errors import FieldViolation
from genmesh.v1 import common_pb2, generation_pb2, inference_pb2

log = logging.getLogger(__name__)

END_OF_INPUT = inference_pb2.InferRequest(
    control=common_pb2.Control(action=common_pb2.Control.ACTION_END_OF_INPUT)
)
#: How many events may wait for a client that reads slowly, or not at all, before the recognition,
#: the model and the voice wait for it.
MAX_BEHIND = 32
#: How many written sentences may wait for the voice: a text delta can hold many (the service
#: merges the deltas that wait for its writes), and the model must wait when the voice does.
MAX_UNSPOKEN = 4
#: How long a cancelled task may run on before it is cancelled again.
RECANCEL_SECONDS = 0.1
Heard = Callable[[common_pb2.StreamEvent], Awaitable[None]]
Requests = AsyncIterator[generation_pb2.ConverseRequest]


async def _closing(source: EventSource) -> AsyncGenerator[common_pb2.StreamEvent, None]:
    """The source's events, its stream closed (so its backend call cancelled) however the
    consumer stops."""
    events = aiter(source)
    try:
        async for event in events:
            yield event
    finally:
        if isinstance(events, AsyncGenerator):
            await events.aclose()


async def _stop(*tasks: asyncio.Future[Any]) -> None:
    """Cancels the tasks and waits until they have ended. The cancel is repeated while one runs
    on: code that swallows a cancel (as asyncio.wait_for on Python 3.11 does when it lands as the
    awaited result arrives) would otherwise leave the model writing its whole reply to nobody."""
    while pending := [task for task in tasks if not task.done()]:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=RECANCEL_SECONDS)


class Recognition:
    """One live recognition stream on the transcription binding: audio in, events out. It ends
    after END_OF_INPUT (or the end of the client's audio), once its last segment is settled."""

    def __init__(
        self, route: BindingRoute, call: InferCall, slot: contextlib.AsyncExitStack, heard: Heard
    ) -> None:
        self.route = route
        self.call = call
        self.slot = slot
        self.heard = heard
        self.ended = False
        self.task = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, routed: Routed, timeout: float | None, heard: Heard) -> Recognition:
        route = routed.route
        assert route is not None
        slot = contextlib.AsyncExitStack()
        await slot.enter_async_context(route.slots.slot())
        try:
            call = route.pick().stub.Infer(timeout=timeout)
            await call.write(inference_pb2.InferRequest(request=routed.request))
        except grpc.aio.AioRpcError as error:
            await slot.aclose()
            raise translate(error, route) from None
        except BaseException:
            await slot.aclose()
            raise
        return cls(route, call, slot, heard)

    async def _read(self) -> None:
        try:
            async for response in self.call:
                if not response.event.HasField("final"):
                    await self.heard(response.event)
        except grpc.aio.AioRpcError as error:
            failed = await peer_error(self.call, error)
            if failed is not None:
                raise translate(failed, self.route) from None
        finally:
            self.call.cancel()
            await self.slot.aclose()

    async def write(self, chunk: common_pb2.AudioChunk) -> None:
        """Sends audio on; a stream that failed meanwhile reports its error through its task."""
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self.call.write(inference_pb2.InferRequest(audio=chunk))

    async def end(self) -> None:
        """No more audio on this stream: its open segment is settled, then the stream ends."""
        if self.ended:
            return
        self.ended = True
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self.call.write(END_OF_INPUT)
            await self.call.done_writing()


@dataclass
class Playback:
    """When the client plays each sentence, taking it to play each chunk as it arrives, right
    after the one before: what it had begun to play at a moment, and whether it still plays."""

    ends: float = 0.0
    starts: list[tuple[float, str]] = field(default_factory=list)

    def sent(self, text: str, seconds: float) -> None:
        start = max(time.monotonic(), self.ends)
        self.ends = start + seconds
        self.starts.append((start, text))

    def spoken(self, at: float) -> str:
        return " ".join(text for start, text in self.starts if start <= at)

    def playing(self, at: float) -> bool:
        return at < self.ends


class Reply:
    """One turn's reply: the model's text streamed out and spoken sentence by sentence."""

    def __init__(
        self, voice: VoiceConversation, turn_id: str, inputs: list[common_pb2.InputItem]
    ) -> None:
        self.voice = voice
        self.turn_id = turn_id
        self.inputs = inputs
        self.text: list[str] = []
        self.playback = Playback()
        self.sentences = 0
        # The history's item of this reply, once it ended.
        self.item: common_pb2.InputItem | None = None
        # Why the reply was cut, set before its task is cancelled.
        self.cut = "client gone"
        self.stopping = False
        self.outcome = "failed"
        self.task = asyncio.ensure_future(self._run())
        self.task.add_done_callback(self._ended)

    def stop(self, reason: str) -> None:
        # Cancelled once: a second cancel would cut short the cleanup of the first.
        if not self.task.done() and not self.stopping:
            self.stopping = True
            self.cut = reason
            self.task.cancel()

    async def _run(self) -> None:
        try:
            final = await self._generate()
        except Exception as exc:
            self.outcome = "failed"
            self.voice.fail(exc)
            return
        self.outcome = "completed"
        self.voice.replied(self, final, "".join(self.text))

    def _ended(self, task: asyncio.Future[None]) -> None:
        """A cut reply's final, CANCELLED with what was spoken: here rather than in `_run`,
        which never runs when the reply is cut before its task starts (a turn and a control
        read together), and would leave the turn without a final or a place in the history."""
        voice = self.voice
        if task.cancelled():
            self.outcome = self.cut
            request = voice.chat.request
            final = common_pb2.GenerateResponse(
                request_id=request.request_id,
                binding=request.binding,
                model=request.model,
                finish_reason=common_pb2.FINISH_REASON_CANCELLED,
            )
            spoken = self.playback.spoken(time.monotonic())
            final.outputs.add(kind=common_pb2.CONTENT_KIND_TEXT, text=spoken)
            voice.replied(self, final, spoken)
        telemetry.event(
            log,
            "voice reply ended",
            request_id=voice.request_id,
            turn_id=self.turn_id,
            outcome=self.outcome,
            sentences=self.sentences,
        )

    async def _generate(self) -> common_pb2.GenerateResponse:
        """The reply written and spoken; a failure of either, or a cut, stops both, and their
        backend streams are closed before this returns."""
        pending: asyncio.Queue[str | None] = asyncio.Queue(MAX_UNSPOKEN)
        writer = asyncio.ensure_future(self._write(pending))
        speaker = asyncio.ensure_future(self._speak(pending))
        try:
            done, _ = await asyncio.wait({writer, speaker}, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
            return writer.result()
        finally:
            await _stop(writer, speaker)

    async def _write(self, pending: asyncio.Queue[str | None]) -> common_pb2.GenerateResponse:
        """Streams the model's reply out, handing each sentence to the voice as it ends."""
        voice = self.voice
        _, source = voice.dispatcher.turn(voice.chat, [*voice.history, *self.inputs], voice.context)
        final = common_pb2.GenerateResponse()
        sentences = SentenceStream()
        async for event in _closing(source):
            if event.HasField("final"):
                final = event.final
                continue
            await voice.emit(self.turn_id, event)
            if event.HasField("text_delta") and event.text_delta.index == 0:
                self.text.append(event.text_delta.text)
                for sentence in sentences.push(event.text_delta.text):
                    await pending.put(sentence)
        for sentence in sentences.finish():
            await pending.put(sentence)
        await pending.put(None)
        return final

    async def _speak(self, pending: asyncio.Queue[str | None]) -> None:
        """Synthesises the sentences in order, each as soon as it is written."""
        voice = self.voice
        while (sentence := await pending.get()) is not None:
            request = common_pb2.GenerateRequest()
            request.CopyFrom(voice.speech.request)
            request.inputs.add(kind=common_pb2.CONTENT_KIND_TEXT, text=sentence)
            source = voice.dispatcher.source(
                Routed(voice.speech.route, request), voice.context.time_remaining()
            )
            async for event in _closing(source):
                if not event.HasField("audio_chunk"):
                    continue
                chunk = event.audio_chunk
                chunk.sequence = self.sentences
                await voice.emit(self.turn_id, event)
                # Played from when it goes out, which waits while the client is behind.
                self.sentences += 1
                self.playback.sent(chunk.text, chunk.duration.ToTimedelta().total_seconds())


class VoiceConversation:
    """A conversation opened by a VoiceConfig: the router keeps the history, listens for the
    user's turns and speaks each reply."""

    def __init__(
        self, dispatcher: Dispatcher, config: generation_pb2.VoiceConfig, context: Context
    ) -> None:
        self.dispatcher = dispatcher
        self.context = context
        self.chat = self._resolve_chat(config.chat)
        self.request_id = rid = self.chat.request.request_id
        listen = common_pb2.GenerateRequest(
            request_id=rid,
            task=common_pb2.TASK_TRANSCRIPTION,
            binding=config.transcription_binding,
            transcription=config.transcription,
        )
        listen.transcription.voice_activity = True
        self.listen = dispatcher.resolve(listen, needs_inputs=False)
        speech = common_pb2.GenerateRequest(
            request_id=rid,
            task=common_pb2.TASK_SPEECH,
            binding=config.speech_binding,
            speech=config.speech,
        )
        self.speech = dispatcher.resolve(speech, needs_inputs=False)
        self.history = list(self.chat.request.inputs)
        self.out: asyncio.Queue[generation_pb2.ConverseResponse | Exception | None] = (
            asyncio.Queue()
        )
        # Room on `out` for events other than finals, failures and the end, which never wait.
        self.room = asyncio.Semaphore(MAX_BEHIND)
        self.turn_id = ""  # the utterance being heard
        self.reply: Reply | None = None  # the reply being made
        self.last: Reply | None = None  # the latest reply, which may still be playing
        self.recognition: Recognition | None = None

    def _resolve_chat(self, chat: common_pb2.GenerateRequest) -> Routed:
        if chat.task not in (common_pb2.TASK_UNSPECIFIED, common_pb2.TASK_TEXT):
            raise errors.invalid_argument(
                "a voice conversation's replies are text generations",
                FieldViolation("voice.chat.task", "must be TASK_TEXT or unset"),
            )
        request = common_pb2.GenerateRequest()
        request.CopyFrom(chat)
        request.task = common_pb2.TASK_TEXT
        return self.dispatcher.resolve(request, needs_inputs=False)

    async def run(
        self, requests: Requests
    ) -> AsyncGenerator[generation_pb2.ConverseResponse, None]:
        await self._listen()
        reader = asyncio.ensure_future(self._read(requests))
        try:
            while (item := await self.out.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                if not item.event.HasField("final"):
                    self.room.release()
                yield item
        finally:
            # In this order, so that none starts another (a recognition, a reply) once stopped.
            await _stop(reader)
            if self.recognition is not None:
                await _stop(self.recognition.task)
            if self.reply is not None:
                self.reply.stop("client gone")
                await asyncio.wait([self.reply.task])

    async def emit(self, turn_id: str, event: common_pb2.StreamEvent) -> None:
        """Queues an event for the client, once it is less than MAX_BEHIND events behind: a
        client that does not read holds back what makes them instead of filling memory."""
        await self.room.acquire()
        self._send(turn_id, event)

    def _send(self, turn_id: str, event: common_pb2.StreamEvent) -> None:
        self.out.put_nowait(
            generation_pb2.ConverseResponse(
                request_id=self.request_id, turn_id=turn_id, event=event
            )
        )

    def fail(self, exc: Exception) -> None:
        """Ends the conversation with this error."""
        self.out.put_nowait(exc)

    def _watch(self, task: asyncio.Future[Any]) -> None:
        """Ends the conversation if the task fails."""

        def done(task: asyncio.Future[Any]) -> None:
            exc = None if task.cancelled() else task.exception()
            if isinstance(exc, Exception):
                self.fail(exc)

        task.add_done_callback(done)

    async def _listen(self) -> Recognition:
        """A new recognition stream (the first, or the next after END_OF_INPUT)."""
        recognition = await Recognition.open(
            self.listen, self.context.time_remaining(), self._heard
        )
        self._watch(recognition.task)
        self.recognition = recognition
        return recognition

    async def _read(self, requests: Requests) -> None:
        """The client's messages; once they end, the last utterance and its reply finish the
        conversation."""
        try:
            async for message in requests:
                kind = message.WhichOneof("message")
                if kind == "audio":
                    recognition = self.recognition
                    if recognition is None or recognition.ended:
                        if recognition is not None:  # its last utterance is settled first
                            await asyncio.wait([recognition.task])
                        recognition = await self._listen()
                    await recognition.write(message.audio)
                elif kind == "turn":
                    turn = message.turn
                    await self._respond(new_turn_id(turn.turn_id), list(turn.inputs))
                elif kind == "control":
                    action = message.control.action
                    if action == common_pb2.Control.ACTION_CANCEL:
                        await self._interrupt("cancelled")
                    elif action == common_pb2.Control.ACTION_END_OF_INPUT and self.recognition:
                        await self.recognition.end()
                else:
                    raise errors.invalid_argument(
                        f"unexpected {kind} message in a voice conversation",
                        FieldViolation(kind or "message", "only audio, turns and controls follow"),
                    )
            if self.recognition is not None:
                await self.recognition.end()
                await asyncio.wait([self.recognition.task])
            if self.reply is not None:
                await asyncio.wait([self.reply.task])
            self.out.put_nowait(None)
        except Exception as exc:
            self.fail(exc)

    async def _heard(self, event: common_pb2.StreamEvent) -> None:
        """An event of the recognition: speech starting opens a turn (and cuts any reply), a
        final transcript with words is answered."""
        if event.HasField("voice_activity") and event.voice_activity.speaking:
            await self._interrupt("barge-in")
            self.turn_id = new_turn_id("")
        turn_id = self.turn_id = self.turn_id or new_turn_id("")
        await self.emit(turn_id, event)
        if event.HasField("transcript") and event.transcript.is_final:
            self.turn_id = ""
            if event.transcript.text:
                prompt = common_pb2.InputItem(
                    kind=common_pb2.CONTENT_KIND_TEXT,
                    role=common_pb2.INPUT_ROLE_USER_PROMPT,
                    text=event.transcript.text,
                )
                await self._respond(turn_id, [prompt])

    async def _respond(self, turn_id: str, inputs: list[common_pb2.InputItem]) -> None:
        await self._interrupt("new turn")
        # A typed turn and an utterance may both wait for the same cut: the later one cuts the
        # reply the other started meanwhile, so only one reply runs, and none is left running.
        while self.reply is not None and not self.reply.task.done():
            await self._interrupt("new turn")
        self.reply = self.last = Reply(self, turn_id, inputs)

    async def _interrupt(self, reason: str) -> None:
        """Cuts the reply being made, or the playback of the last one; the history keeps what
        had been spoken."""
        now = time.monotonic()
        reply = self.reply
        if reply is not None:
            reply.stop(reason)
            await asyncio.wait([reply.task])
        elif self.last is not None and self.last.item and self.last.playback.playing(now):
            self.last.item.text = self.last.playback.spoken(now)

    def replied(self, reply: Reply, final: common_pb2.GenerateResponse, spoken: str) -> None:
        """A reply ended: its final event goes out and the history keeps the turn."""
        self._send(reply.turn_id, common_pb2.StreamEvent(final=final))
        reply.item = common_pb2.InputItem(
            kind=common_pb2.CONTENT_KIND_TEXT,
            role=common_pb2.INPUT_ROLE_ASSISTANT_REPLY,
            text=spoken,
        )
        self.history.extend([*reply.inputs, reply.item])
        if self.reply is reply:
            self.reply = None
