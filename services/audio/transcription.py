"""Speech in: one whole-file transcription as an Infer job, plus what a live session shares.

Each recognised segment streams out as a final TranscriptUpdate as soon as Whisper settles it; a
stop lands between segments and the final message keeps the segments so far.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any, TypeVar

from genmesh.audio import codecs
from genmesh.audio.codecs import WHISPER_RATE, CodecError, Samples
from genmesh.audio.inputs import AudioInput, invalid
from genmesh.audio.stt import (
    Recognition,
    Segment,
    TranscribeOptions,
    TranscriptionInputError,
    WhisperSTT,
    joined,
)
from genmesh.runtime.inference import InferJob, Stop
from genmesh.runtime.limiter import Slots
from genmesh.runtime.timing import duration
from genmesh.v1 import common_pb2

T = TypeVar("T")


async def in_thread(items: Iterator[T]) -> AsyncIterator[T]:
    """Drains a blocking iterator from worker threads, so the event loop stays free."""
    done = object()
    while (item := await asyncio.to_thread(next, items, done)) is not done:
        yield item  # type: ignore[misc]


# Whisper's measures of a segment, under the same names in the proto.
MEASURES = ("tokens", "avg_logprob", "compression_ratio", "no_speech_prob", "temperature", "seek")


def segment_proto(segment: Segment) -> common_pb2.TranscriptSegment:
    return common_pb2.TranscriptSegment(
        start=duration(segment.start),
        end=duration(segment.end),
        text=segment.text,
        **{name: getattr(segment, name) for name in MEASURES},
        words=[
            common_pb2.TranscriptWord(
                start=duration(w.start), end=duration(w.end), word=w.word, probability=w.probability
            )
            for w in segment.words
        ],
    )


def transcript_output(
    language: str, probability: float, segments: list[Segment], seconds: float
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


def transcribe_options(stt: WhisperSTT, request: common_pb2.GenerateRequest) -> TranscribeOptions:
    params = request.transcription
    options = TranscribeOptions(
        language=params.language,
        word_timestamps=params.word_timestamps,
        initial_prompt=params.initial_prompt,
    )
    try:
        stt.validate(options)
    except TranscriptionInputError as exc:
        raise invalid(str(exc), exc.field) from None
    return options


async def decode(item: AudioInput, max_seconds: float) -> Samples:
    """The input file as 16 kHz samples; undecodable or too long is the client's error."""
    try:
        samples = await asyncio.to_thread(codecs.decode, item.data, item.mime_type)
    except CodecError as exc:
        raise invalid(str(exc), item.field) from None
    if len(samples) > max_seconds * WHISPER_RATE:
        raise invalid("the audio is too long", item.field, f"at most {max_seconds:g} seconds")
    return samples


class Transcribing(InferJob):
    """What both transcriptions, of a file and live, report: the settled segments so far as
    one transcript, complete once the audio ended by itself."""

    def __init__(self, stt: WhisperSTT) -> None:
        self.stt = stt
        self.model = stt.name
        self.segments: list[Segment] = []
        self.complete = False

    @abc.abstractmethod
    def facts(self) -> tuple[str, float, float]:
        """The language, how sure its detection is, and the seconds of audio heard."""

    async def result(self) -> common_pb2.GenerateResponse:
        language, probability, seconds = self.facts()
        output = transcript_output(language, probability, self.segments, seconds)
        response = common_pb2.GenerateResponse(outputs=[output])
        if self.complete:
            response.finish_reason = common_pb2.FINISH_REASON_STOP
        return response

    def summary(self) -> dict[str, Any]:
        return {"segments": len(self.segments)}


class FileTranscription(Transcribing):
    def __init__(
        self, stt: WhisperSTT, slots: Slots, samples: Samples, options: TranscribeOptions
    ) -> None:
        super().__init__(stt)
        self.slots = slots
        self.samples = samples
        self.options = options
        self.recognition: Recognition | None = None

    async def events(self, stop: Stop) -> AsyncGenerator[common_pb2.StreamEvent, None]:
        if stop:
            return
        recognition = await asyncio.to_thread(self.stt.recognise, self.samples, self.options)
        self.recognition = recognition
        async for segment in in_thread(recognition.segments):
            self.segments.append(segment)
            update = common_pb2.TranscriptUpdate(
                is_final=True, text=segment.text, segment=segment_proto(segment)
            )
            yield common_pb2.StreamEvent(transcript=update)
            if stop:
                return
        self.complete = True

    def facts(self) -> tuple[str, float, float]:
        seconds = len(self.samples) / WHISPER_RATE
        found = self.recognition
        if found is None:
            return self.options.language, 0.0, seconds
        return found.language, found.language_probability, seconds
