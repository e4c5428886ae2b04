"""Speech in, live: raw PCM streamed in over the Infer stream (the router relays Converse's
audio here) up to Control END_OF_INPUT, transcribed as it comes.

Voice activity detection cuts the stream into speech segments; each is reported as partial
transcripts while it is open and as a final transcript when it ends. Each recognition queues for
the recogniser on its own, so a long session does not hold it between utterances. Asked for
voice activity, the session also reports each segment's start and end as they are detected, and
settles every ended segment with a final transcript, empty when it held no words, so that a voice
loop knows each utterance's outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncGenerator

from genmesh.audio import codecs
from genmesh.audio.codecs import WHISPER_RATE, CodecError, Samples
from genmesh.audio.inputs import invalid
from genmesh.audio.streaming import Segmenter, SegmenterConfig, SpeechEvent
from genmesh.audio.stt import Segment, TranscribeOptions, WhisperSTT
from genmesh.audio.transcription import Transcribing, segment_proto
from genmesh.runtime.errors import ServiceError
from genmesh.runtime.inference import Requests, Stop, is_cancel
from genmesh.runtime.limiter import Slots
from genmesh.runtime.timing import duration
from genmesh.v1 import common_pb2

#: A partial's language detection this sure settles the language of a stream.
LANGUAGE_LOCK = 0.8
#: Segments (partial or settled) and boundaries found but not yet reported, beyond which the
#: stream's audio is not read until the recogniser catches up.
MAX_PENDING = 16

Pending = asyncio.Queue[SpeechEvent | ServiceError | None]


def chunk_samples(chunk: common_pb2.AudioChunk) -> Samples:
    """Streamed audio is raw 16-bit mono PCM (``audio/pcm`` little-endian or ``audio/L16``
    big-endian) at the chunk's rate (default 16 kHz), resampled for Whisper."""
    kind, params = codecs.media_type(chunk.mime_type or codecs.PCM_MIME)
    if kind not in codecs.RAW_PCM:
        raise invalid(
            f"streamed audio must be raw PCM, not {kind!r}",
            "audio.mime_type",
            f"use {codecs.pcm_mime(WHISPER_RATE)}",
        )
    try:
        rate = codecs.pcm_rate(params, chunk.sample_rate)
        return codecs.resample(codecs.pcm_to_float(chunk.data, kind), rate, WHISPER_RATE)
    except CodecError as exc:
        raise invalid(str(exc), "audio") from None


class LiveTranscription(Transcribing):
    reads_input = True

    def __init__(
        self,
        stt: WhisperSTT,
        recogniser: Slots,
        requests: Requests,
        options: TranscribeOptions,
        config: SegmenterConfig,
        max_seconds: float,
        voice_activity: bool = False,
    ) -> None:
        super().__init__(stt)
        self.voice_activity = voice_activity
        self.recogniser = recogniser
        self.requests = requests
        self.options = options
        self.segmenter = Segmenter(config)
        self.limit = max_seconds * WHISPER_RATE
        self.probability = 1.0 if options.language else 0.0
        self._taken = asyncio.Event()  # set as the events loop takes an event

    async def events(self, stop: Stop) -> AsyncGenerator[common_pb2.StreamEvent, None]:
        pending: Pending = asyncio.Queue()
        reader = asyncio.create_task(self._read(pending, stop))
        stopper = asyncio.create_task(stop.wait())
        stopper.add_done_callback(lambda _: pending.put_nowait(None))
        try:
            while (event := await pending.get()) is not None:
                self._taken.set()
                if isinstance(event, ServiceError):
                    raise event
                if stop:
                    return
                if event.kind != "speech":
                    for boundary in self._boundary(event):
                        yield boundary
                    continue
                if not event.final and not pending.empty():
                    continue  # a newer partial or the settled segment supersedes this one
                update = await self._recognise(event)
                if update is None and event.final and self.voice_activity:
                    update = common_pb2.TranscriptUpdate(is_final=True)
                if update is not None:
                    yield common_pb2.StreamEvent(transcript=update)
            self.complete = not stop
        finally:
            stopper.cancel()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    def _boundary(self, event: SpeechEvent) -> list[common_pb2.StreamEvent]:
        """A boundary's VoiceActivity event, and a dropped segment's empty final transcript."""
        if not self.voice_activity:
            return []
        activity = common_pb2.VoiceActivity(
            speaking=event.kind == "started", position=duration(event.start_s)
        )
        events = [common_pb2.StreamEvent(voice_activity=activity)]
        if event.kind == "dropped":
            empty = common_pb2.TranscriptUpdate(is_final=True)
            events.append(common_pb2.StreamEvent(transcript=empty))
        return events

    async def _recognise(self, event: SpeechEvent) -> common_pb2.TranscriptUpdate | None:
        async with self.recogniser.slot():
            language, probability, pieces = await asyncio.to_thread(self._recognise_event, event)
        if not pieces:
            return None
        if not self.options.language and (event.final or probability >= LANGUAGE_LOCK):
            # Detection costs a pass of the encoder: detect once, then keep the language.
            self.options = dataclasses.replace(self.options, language=language)
            self.probability = probability
        segment = Segment.merged(pieces)
        update = common_pb2.TranscriptUpdate(is_final=event.final, text=segment.text)
        if event.final:
            self.segments.append(segment)
            update.segment.CopyFrom(segment_proto(segment))
        return update

    def _recognise_event(self, event: SpeechEvent) -> tuple[str, float, list[Segment]]:
        """Partials use greedy decoding: they are soon replaced, so speed matters more."""
        recognition = self.stt.recognise(
            event.audio,
            self.options,
            offset=event.start_s,
            vad=False,
            beam_size=5 if event.final else 1,
        )
        pieces = [s for s in recognition.segments if s.text]
        return recognition.language, recognition.language_probability, pieces

    async def _read(self, pending: Pending, stop: Stop) -> None:
        """Feeds streamed audio to the segmenter until END_OF_INPUT, then watches for CANCEL."""
        segmenter = self.segmenter
        ended = False
        try:
            async for message in self.requests:
                kind = message.WhichOneof("message")
                if is_cancel(message):
                    stop.set(common_pb2.FINISH_REASON_CANCELLED)
                    break
                if kind == "control":
                    if message.control.action == common_pb2.Control.ACTION_END_OF_INPUT:
                        ended = True
                        for event in segmenter.finish():
                            pending.put_nowait(event)
                        pending.put_nowait(None)
                    continue
                if ended:
                    raise invalid("audio after END_OF_INPUT", "audio", "the input has ended")
                if kind != "audio":
                    raise invalid("one request per stream", "request", "only on the first message")
                samples = chunk_samples(message.audio)
                for event in await asyncio.to_thread(segmenter.push, samples):
                    pending.put_nowait(event)
                # The segmenter outruns the recogniser: audio sent faster than it plays waits
                # here (and so in the client's stream), not queued as segments, each with its
                # audio (a partial of every second of speech holds all the speech before it).
                while pending.qsize() >= MAX_PENDING:
                    self._taken.clear()
                    await self._taken.wait()
                if segmenter.position > self.limit:
                    raise invalid("the audio is too long", "audio", "exceeds max_audio_seconds")
            if not ended:  # the client closed its side without END_OF_INPUT
                for event in segmenter.finish():
                    pending.put_nowait(event)
        except ServiceError as exc:
            pending.put_nowait(exc)
        finally:
            pending.put_nowait(None)

    def facts(self) -> tuple[str, float, float]:
        return self.options.language, self.probability, self.segmenter.position / WHISPER_RATE
