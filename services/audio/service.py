"""InferenceService for audio: speech synthesis and recognition, unary and streaming.

One ``Infer`` stream serves one request. Speech streams a Progress event as each sentence starts
and its audio as soon as it is synthesised, then the whole file. Transcription takes either one
audio input item (a whole file) or, without one, raw PCM streamed in as AudioChunk messages up to
Control END_OF_INPUT; speech segments are cut by voice activity detection and each is reported
as partial transcripts while it is open and as a final transcript when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import urllib.request
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np

from genmesh.audio import codecs
from genmesh.audio.codecs import WHISPER_RATE, CodecError, Samples
from genmesh.audio.settings import AudioSettings
from genmesh.audio.streaming import Segmenter, SegmenterConfig, SpeechEvent
from genmesh.audio.stt import Segment, TranscribeOptions, TranscriptionInputError, WhisperSTT
from genmesh.audio.tts import PiperTTS, SpeechInputError, SpeechOptions
from genmesh.runtime import errors, telemetry
from genmesh.runtime.errors import FieldViolation, ServiceError
from genmesh.runtime.timing import Stopwatch, duration
from genmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
Requests = AsyncIterator[inference_pb2.InferRequest]
T = TypeVar("T")

TEXT_KINDS = (common_pb2.CONTENT_KIND_UNSPECIFIED, common_pb2.CONTENT_KIND_TEXT)
SPOKEN_ROLES = (common_pb2.INPUT_ROLE_UNSPECIFIED, common_pb2.INPUT_ROLE_USER_PROMPT)
FORMAT_NAMES = ["wav", "pcm_s16le", "flac", "ogg_opus"]
#: A partial's language detection this sure settles the language of a stream.
LANGUAGE_LOCK = 0.8


async def in_thread(items: Iterator[T]) -> AsyncIterator[T]:
    """Drains a blocking iterator from worker threads, so the event loop stays free."""
    done = object()
    while (item := await asyncio.to_thread(next, items, done)) is not done:
        yield item  # type: ignore[misc]


def respond(request_id: str, **event: Any) -> inference_pb2.InferResponse:
    return inference_pb2.InferResponse(request_id=request_id, event=common_pb2.StreamEvent(**event))


def segment_proto(segment: Segment) -> common_pb2.TranscriptSegment:
    return common_pb2.TranscriptSegment(
        start=duration(segment.start),
        end=duration(segment.end),
        text=segment.text,
        words=[
            common_pb2.TranscriptWord(
                start=duration(w.start), end=duration(w.end), word=w.word, probability=w.probability
            )
            for w in segment.words
        ],
    )


def joined(segments: Iterable[Segment]) -> str:
    return " ".join(s.text for s in segments if s.text)


def invalid(message: str, field: str, description: str = "") -> ServiceError:
    return errors.invalid_argument(message, FieldViolation(field, description or message))


def resolve_task(request: common_pb2.GenerateRequest) -> common_pb2.Task.ValueType:
    """The task asked for; when unset, the parameters or the inputs say which."""
    if request.task in (common_pb2.TASK_SPEECH, common_pb2.TASK_TRANSCRIPTION):
        return request.task
    if request.task == common_pb2.TASK_UNSPECIFIED:
        parameters = request.WhichOneof("parameters")
        if parameters == "speech":
            return common_pb2.TASK_SPEECH
        if parameters == "transcription" or not request.inputs:
            return common_pb2.TASK_TRANSCRIPTION
        if any(i.kind == common_pb2.CONTENT_KIND_AUDIO for i in request.inputs):
            return common_pb2.TASK_TRANSCRIPTION
        return common_pb2.TASK_SPEECH
    raise invalid(
        "the audio service serves speech and transcription only",
        "task",
        "must be TASK_SPEECH or TASK_TRANSCRIPTION",
    )


def speech_text(request: common_pb2.GenerateRequest, limit: int) -> str:
    """The text to speak: the user prompt items, in order (system context only conditions LLMs)."""
    parts: list[str] = []
    for index, item in enumerate(request.inputs):
        if item.kind not in TEXT_KINDS or item.WhichOneof("payload") != "text":
            raise invalid("text-to-speech takes text inputs", f"inputs[{index}]", "must be text")
        if item.role in SPOKEN_ROLES:
            parts.append(item.text)
    text = "\n\n".join(parts)
    if len(text) > limit:
        raise invalid("the text is too long", "inputs", f"at most {limit} characters")
    return text


@dataclass(frozen=True)
class AudioInput:
    field: str
    data: bytes
    mime_type: str


def audio_input(request: common_pb2.GenerateRequest) -> AudioInput | None:
    """The one audio item of a whole-file transcription, or None for streamed audio."""
    found = [
        (i, item)
        for i, item in enumerate(request.inputs)
        if item.kind == common_pb2.CONTENT_KIND_AUDIO
        or item.role == common_pb2.INPUT_ROLE_INPUT_AUDIO
    ]
    if not found:
        return None
    if len(found) > 1:
        raise invalid("one audio input at a time", "inputs", "holds more than one audio item")
    index, item = found[0]
    field = f"inputs[{index}]"
    payload = item.WhichOneof("payload")
    if payload == "uri" and item.uri.startswith("data:"):
        try:
            with urllib.request.urlopen(item.uri) as uri:
                return AudioInput(f"{field}.uri", uri.read(), uri.headers["Content-Type"] or "")
        except ValueError as exc:
            raise invalid("malformed data: URI", f"{field}.uri", str(exc)) from None
    if payload != "data":
        raise invalid("audio must be inline", f"{field}", "needs data bytes or a data: URI")
    if not item.mime_type:
        raise invalid("the audio's media type is missing", f"{field}.mime_type", "required")
    return AudioInput(f"{field}.data", item.data, item.mime_type)


@dataclass
class _StreamState:
    """Shared by a stream's reader and its transcriber."""

    cancelled: bool = False


class AudioInferenceService(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, tts: PiperTTS, stt: WhisperSTT, settings: AudioSettings) -> None:
        self.tts = tts
        self.stt = stt
        self.settings = settings
        self._tts_slots = asyncio.Semaphore(settings.max_concurrency)
        self._stt_slots = asyncio.Semaphore(settings.max_concurrency)
        s = settings.streaming
        self._segmenter_config = SegmenterConfig(
            threshold=s.threshold,
            neg_threshold=max(s.threshold - 0.15, 0.01),
            min_silence_ms=s.min_silence_ms,
            speech_pad_ms=s.speech_pad_ms,
            max_segment_s=s.max_segment_s,
            partial_every_s=s.partial_every_s,
        )

    async def load(self) -> None:
        await asyncio.to_thread(self.tts.load)
        await asyncio.to_thread(self.stt.load)

    def _check_model(self, requested: str, serving: str) -> None:
        if not requested or requested == serving:
            return
        if requested in (self.tts.name, self.stt.name):
            raise invalid(f"model '{requested}' does not serve this task", "model")
        raise errors.not_found(
            f"no model '{requested}' on this service", "model", requested, "model"
        )

    async def Infer(  # noqa: N802 - gRPC method name
        self, request_iterator: Requests, context: Context
    ) -> AsyncIterator[inference_pb2.InferResponse]:
        clock = Stopwatch()
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("message") != "request":
            raise invalid("the first Infer message must be a request", "request", "must be set")
        request = first.request
        context.set_trailing_metadata((("x-request-id", request.request_id),))
        if resolve_task(request) == common_pb2.TASK_SPEECH:
            events = self._speak(request, request_iterator, clock)
        else:
            events = self._transcribe(request, request_iterator, clock)
        async for response in events:
            yield response
        context.set_trailing_metadata((("x-request-id", request.request_id), *clock.metadata()))

    # Speech.

    async def _speak(
        self, request: common_pb2.GenerateRequest, requests: Requests, clock: Stopwatch
    ) -> AsyncIterator[inference_pb2.InferResponse]:
        self._check_model(request.model, self.tts.name)
        params = request.speech
        options = SpeechOptions(
            voice=params.voice,
            speed=params.speed if params.HasField("speed") else 1.0,
            noise=params.noise if params.HasField("noise") else None,
        )
        text = speech_text(request, self.settings.max_text_chars)
        try:
            sentences = self.tts.validate(text, options)
            encoding = codecs.resolve_encoding(
                params.format, params.sample_rate, self.tts.sample_rate
            )
        except (SpeechInputError, CodecError) as exc:
            raise invalid(str(exc), exc.field or "speech") from None
        rid, native = request.request_id, self.tts.sample_rate
        cancel = asyncio.Event()
        watcher = asyncio.create_task(self._watch_cancel(requests, cancel))
        spoken: list[Samples] = []
        finish = common_pb2.FINISH_REASON_STOP
        try:
            async with self._tts_slots:
                clock.dequeued()
                for index, sentence in enumerate(sentences):
                    if cancel.is_set():
                        finish = common_pb2.FINISH_REASON_CANCELLED
                        break
                    yield respond(
                        rid,
                        progress=common_pb2.Progress(
                            step=index + 1, total_steps=len(sentences), stage="synthesising"
                        ),
                    )
                    audio = await asyncio.to_thread(self.tts.synthesize, sentence, options)
                    data = await asyncio.to_thread(codecs.encode, audio.samples, native, encoding)
                    clock.first_output()
                    spoken.append(audio.samples)
                    chunk = common_pb2.AudioChunk(
                        data=data,
                        mime_type=encoding.mime_type,
                        sample_rate=encoding.sample_rate,
                        sequence=index,
                        text=sentence,
                    )
                    yield respond(rid, audio_chunk=chunk)
        finally:
            watcher.cancel()
        whole = np.concatenate(spoken) if spoken else np.zeros(0, dtype=np.float32)
        data = await asyncio.to_thread(codecs.encode, whole, native, encoding)
        telemetry.event(
            log, "speech done", request_id=rid, sentences=len(spoken), seconds=len(whole) / native
        )
        output = common_pb2.OutputItem(
            kind=common_pb2.CONTENT_KIND_AUDIO,
            data=data,
            mime_type=encoding.mime_type,
            text=" ".join(sentences[: len(spoken)]),
        )
        yield self._final(request, self.tts.name, output, finish, clock)

    @staticmethod
    async def _watch_cancel(requests: Requests, cancel: asyncio.Event) -> None:
        async for message in requests:
            if (
                message.WhichOneof("message") == "control"
                and message.control.action == common_pb2.Control.ACTION_CANCEL
            ):
                cancel.set()
                return

    @staticmethod
    def _final(
        request: common_pb2.GenerateRequest,
        model: str,
        output: common_pb2.OutputItem,
        finish: common_pb2.FinishReason.ValueType,
        clock: Stopwatch,
    ) -> inference_pb2.InferResponse:
        final = common_pb2.GenerateResponse(
            request_id=request.request_id,
            model=model,
            outputs=[output],
            finish_reason=finish,
            timings=clock.timings(),
        )
        return respond(request.request_id, final=final)

    # Transcription.

    def _transcribe_options(self, request: common_pb2.GenerateRequest) -> TranscribeOptions:
        self._check_model(request.model, self.stt.name)
        params = request.transcription
        options = TranscribeOptions(
            language=params.language,
            word_timestamps=params.word_timestamps,
            initial_prompt=params.initial_prompt,
        )
        try:
            self.stt.validate(options)
        except TranscriptionInputError as exc:
            raise invalid(str(exc), exc.field) from None
        return options

    async def _transcribe(
        self, request: common_pb2.GenerateRequest, requests: Requests, clock: Stopwatch
    ) -> AsyncIterator[inference_pb2.InferResponse]:
        options = self._transcribe_options(request)
        item = audio_input(request)
        events = (
            self._transcribe_stream(request, requests, options, clock)
            if item is None
            else self._transcribe_file(request, item, requests, options, clock)
        )
        async for event in events:
            yield event

    def _transcript_output(
        self, language: str, probability: float, segments: list[Segment], seconds: float
    ) -> common_pb2.OutputItem:
        transcript = common_pb2.Transcript(
            language=language,
            language_probability=probability,
            segments=[segment_proto(s) for s in segments],
            duration=duration(seconds),
        )
        return common_pb2.OutputItem(
            kind=common_pb2.CONTENT_KIND_TEXT, text=joined(segments), transcript=transcript
        )

    async def _transcribe_file(
        self,
        request: common_pb2.GenerateRequest,
        item: AudioInput,
        requests: Requests,
        options: TranscribeOptions,
        clock: Stopwatch,
    ) -> AsyncIterator[inference_pb2.InferResponse]:
        try:
            samples = await asyncio.to_thread(codecs.decode, item.data, item.mime_type)
        except CodecError as exc:
            raise invalid(str(exc), item.field) from None
        limit = self.settings.max_audio_seconds
        if len(samples) > limit * WHISPER_RATE:
            raise invalid("the audio is too long", item.field, f"at most {limit:g} seconds")
        rid = request.request_id
        cancel = asyncio.Event()
        watcher = asyncio.create_task(self._watch_cancel(requests, cancel))
        segments: list[Segment] = []
        finish = common_pb2.FINISH_REASON_STOP
        try:
            async with self._stt_slots:
                clock.dequeued()
                recognition = await asyncio.to_thread(self.stt.recognise, samples, options)
                async for segment in in_thread(recognition.segments):
                    clock.first_output()
                    segments.append(segment)
                    update = common_pb2.TranscriptUpdate(
                        is_final=True, text=segment.text, segment=segment_proto(segment)
                    )
                    yield respond(rid, transcript=update)
                    if cancel.is_set():
                        finish = common_pb2.FINISH_REASON_CANCELLED
                        break
        finally:
            watcher.cancel()
        output = self._transcript_output(
            recognition.language,
            recognition.language_probability,
            segments,
            len(samples) / WHISPER_RATE,
        )
        yield self._final(request, self.stt.name, output, finish, clock)

    async def _transcribe_stream(
        self,
        request: common_pb2.GenerateRequest,
        requests: Requests,
        options: TranscribeOptions,
        clock: Stopwatch,
    ) -> AsyncIterator[inference_pb2.InferResponse]:
        rid = request.request_id
        segmenter = Segmenter(self._segmenter_config)
        queue: asyncio.Queue[SpeechEvent | ServiceError | None] = asyncio.Queue()
        state = _StreamState()
        reader = asyncio.create_task(self._read_stream(requests, segmenter, queue, state))
        clock.dequeued()
        segments: list[Segment] = []
        probability = 1.0 if options.language else 0.0
        finish = common_pb2.FINISH_REASON_STOP
        try:
            while (event := await queue.get()) is not None:
                if isinstance(event, ServiceError):
                    raise event
                if state.cancelled:
                    finish = common_pb2.FINISH_REASON_CANCELLED
                    break
                if not event.final and not queue.empty():
                    continue  # a newer partial or the settled segment supersedes this one
                async with self._stt_slots:
                    language, prob, pieces = await asyncio.to_thread(
                        self._recognise_event, event, options
                    )
                if not pieces:
                    continue
                if not options.language and (event.final or prob >= LANGUAGE_LOCK):
                    # Detection costs a pass of the encoder: detect once, then keep the language.
                    options = dataclasses.replace(options, language=language)
                    probability = prob
                clock.first_output()
                segment = Segment(
                    pieces[0].start,
                    pieces[-1].end,
                    joined(pieces),
                    tuple(w for p in pieces for w in p.words),
                )
                update = common_pb2.TranscriptUpdate(is_final=event.final, text=segment.text)
                if event.final:
                    segments.append(segment)
                    update.segment.CopyFrom(segment_proto(segment))
                yield respond(rid, transcript=update)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if state.cancelled:
            finish = common_pb2.FINISH_REASON_CANCELLED
        output = self._transcript_output(
            options.language, probability, segments, segmenter.position / WHISPER_RATE
        )
        yield self._final(request, self.stt.name, output, finish, clock)

    def _recognise_event(
        self, event: SpeechEvent, options: TranscribeOptions
    ) -> tuple[str, float, list[Segment]]:
        """Partials use greedy decoding: they are soon replaced, so speed matters more."""
        recognition = self.stt.recognise(
            event.audio,
            options,
            offset=event.start_s,
            vad=False,
            beam_size=5 if event.final else 1,
        )
        pieces = [s for s in recognition.segments if s.text]
        return recognition.language, recognition.language_probability, pieces

    async def _read_stream(
        self,
        requests: Requests,
        segmenter: Segmenter,
        queue: asyncio.Queue[SpeechEvent | ServiceError | None],
        state: _StreamState,
    ) -> None:
        """Feeds streamed audio to the segmenter until END_OF_INPUT, then watches for CANCEL."""
        limit = self.settings.max_audio_seconds * WHISPER_RATE
        ended = False
        try:
            async for message in requests:
                kind = message.WhichOneof("message")
                if kind == "control":
                    if message.control.action == common_pb2.Control.ACTION_CANCEL:
                        state.cancelled = True
                        break
                    if message.control.action == common_pb2.Control.ACTION_END_OF_INPUT:
                        ended = True
                        for event in segmenter.finish():
                            queue.put_nowait(event)
                        queue.put_nowait(None)
                    continue
                if ended:
                    raise invalid("audio after END_OF_INPUT", "audio", "the input has ended")
                if kind != "audio":
                    raise invalid("one request per stream", "request", "only on the first message")
                samples = self._chunk_samples(message.audio)
                for event in await asyncio.to_thread(segmenter.push, samples):
                    queue.put_nowait(event)
                if segmenter.position > limit:
                    raise invalid("the audio is too long", "audio", "exceeds max_audio_seconds")
            if not ended:  # the client closed its side without END_OF_INPUT
                for event in segmenter.finish():
                    queue.put_nowait(event)
        except ServiceError as exc:
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(None)

    @staticmethod
    def _chunk_samples(chunk: common_pb2.AudioChunk) -> Samples:
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

    # Catalogue.

    def _tts_info(self) -> common_pb2.ModelInfo:
        info = common_pb2.ModelInfo(
            name=self.tts.name,
            engine=self.tts.engine,
            tasks=[common_pb2.TASK_SPEECH],
            voices=self.tts.voices,
            languages=[self.tts.language],
            sample_rates=[self.tts.sample_rate],
            loaded=self.tts.loaded,
            size_bytes=self.tts.size_bytes,
        )
        info.details.update(
            {
                "formats": FORMAT_NAMES,
                "output_sample_rates": f"{codecs.MIN_RATE}..{codecs.MAX_RATE}",
                "opus_sample_rates": list(codecs.OPUS_RATES),
                "phonemizer": "espeak-ng",
                "streaming": "one audio chunk per sentence",
            }
        )
        return info

    def _stt_info(self) -> common_pb2.ModelInfo:
        info = common_pb2.ModelInfo(
            name=self.stt.name,
            engine=self.stt.engine,
            tasks=[common_pb2.TASK_TRANSCRIPTION],
            supports_audio=True,
            languages=self.stt.languages,
            sample_rates=[self.stt.sample_rate],
            loaded=self.stt.loaded,
            size_bytes=self.stt.size_bytes,
        )
        info.details.update(
            {
                "input_mime_types": sorted(codecs.DECODABLE_MIME_TYPES),
                "streaming_input": codecs.pcm_mime(WHISPER_RATE),
                "vad": "silero",
                "word_timestamps": True,
            }
        )
        return info

    async def ListModels(  # noqa: N802
        self, request: inference_pb2.InferenceServiceListModelsRequest, context: Context
    ) -> inference_pb2.InferenceServiceListModelsResponse:
        return inference_pb2.InferenceServiceListModelsResponse(
            models=[self._tts_info(), self._stt_info()]
        )

    async def GetModelInfo(  # noqa: N802
        self, request: inference_pb2.InferenceServiceGetModelInfoRequest, context: Context
    ) -> inference_pb2.InferenceServiceGetModelInfoResponse:
        if request.model in ("", self.tts.name):
            return inference_pb2.InferenceServiceGetModelInfoResponse(model=self._tts_info())
        if request.model == self.stt.name:
            return inference_pb2.InferenceServiceGetModelInfoResponse(model=self._stt_info())
        raise errors.not_found(
            f"no model '{request.model}' on this service", "model", request.model, "model"
        )

    async def Tokenize(  # noqa: N802
        self, request: inference_pb2.InferenceServiceTokenizeRequest, context: Context
    ) -> inference_pb2.InferenceServiceTokenizeResponse:
        raise ServiceError(grpc.StatusCode.UNIMPLEMENTED, "audio models have no tokenizer")

    async def Detokenize(  # noqa: N802
        self, request: inference_pb2.InferenceServiceDetokenizeRequest, context: Context
    ) -> inference_pb2.InferenceServiceDetokenizeResponse:
        raise ServiceError(grpc.StatusCode.UNIMPLEMENTED, "audio models have no tokenizer")
