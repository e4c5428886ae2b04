"""Speech-to-text with Whisper base (CTranslate2) run by faster-whisper, loaded from local files.

faster-whisper decodes lazily: segments are yielded as each 30-second window is decoded, which
lets the service stream settled segments of a long file before the whole file is done.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from faster_whisper import WhisperModel
from faster_whisper.vad import VadOptions

from genmesh.audio.assets import whisper_model_dir
from genmesh.audio.codecs import WHISPER_RATE, Samples

#: Silences shorter than this stay inside one segment of a whole-file transcription.
FILE_VAD = VadOptions(min_silence_duration_ms=500, speech_pad_ms=200)


class TranscriptionInputError(ValueError):
    """A parameter the recogniser cannot honour; `field` names the request field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class TranscribeOptions:
    language: str = ""
    word_timestamps: bool = False
    initial_prompt: str = ""


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class Segment:
    """Recognised speech with times in seconds from the start of the audio, and Whisper's own
    measures of how sure it is (what OpenAI's verbose transcripts show)."""

    start: float
    end: float
    text: str
    words: tuple[Word, ...] = field(default=())
    tokens: tuple[int, ...] = ()
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    temperature: float = 0.0
    # The decoding window's start, in 10 ms frames from the start of the audio.
    seek: int = 0

    @classmethod
    def merged(cls, pieces: list[Segment]) -> Segment:
        """Consecutive segments as one: the text joined, its measures taken over all of it (a
        piece with speech makes the whole a segment with speech)."""
        text = joined(pieces)
        tokens = tuple(t for p in pieces for t in p.tokens)
        weighted = sum(p.avg_logprob * len(p.tokens) for p in pieces)
        return cls(
            pieces[0].start,
            pieces[-1].end,
            text,
            tuple(w for p in pieces for w in p.words),
            tokens,
            weighted / len(tokens) if tokens else 0.0,
            compression_ratio(text),
            min(p.no_speech_prob for p in pieces),
            max(p.temperature for p in pieces),
            pieces[0].seek,
        )


def joined(segments: Iterable[Segment]) -> str:
    return " ".join(s.text for s in segments if s.text)


def compression_ratio(text: str) -> float:
    """Whisper's measure of repetition: the text's UTF-8 size over its compressed size."""
    data = text.encode()
    return len(data) / len(zlib.compress(data)) if data else 0.0


@dataclass(frozen=True)
class Recognition:
    """A transcription in progress: the language is known at once, segments follow lazily."""

    language: str
    language_probability: float
    duration: float
    segments: Iterator[Segment]


class WhisperSTT:
    """One loaded Whisper model. Calls block; callers run them in a worker thread."""

    engine = "faster-whisper"
    name = "whisper-base"
    sample_rate = WHISPER_RATE

    def __init__(self, model_dir: Path | None = None, cpu_threads: int = 0) -> None:
        self._model_dir = model_dir
        self._cpu_threads = cpu_threads
        self._model: WhisperModel | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> WhisperModel:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    folder = self._model_dir or whisper_model_dir()
                    self._model = WhisperModel(
                        str(folder),
                        device="cpu",
                        compute_type="int8",
                        cpu_threads=self._cpu_threads,
                        local_files_only=True,
                    )
        return self._model

    @property
    def languages(self) -> list[str]:
        langs: list[str] = self.model.supported_languages
        return langs

    @property
    def size_bytes(self) -> int:
        return (self._model_dir or whisper_model_dir()).joinpath("model.bin").stat().st_size

    def load(self) -> None:
        _ = self.model

    def validate(self, options: TranscribeOptions) -> None:
        if options.language and options.language not in self.languages:
            raise TranscriptionInputError(
                "transcription.language", f"unsupported language {options.language!r}"
            )

    def recognise(
        self,
        samples: Samples,
        options: TranscribeOptions,
        *,
        offset: float = 0.0,
        vad: bool = True,
        beam_size: int = 5,
    ) -> Recognition:
        """Transcribes 16 kHz mono samples; times are shifted by ``offset`` seconds.

        ``vad`` skips silence inside the audio (whole files); streamed segments are already cut
        at speech boundaries, so they pass ``vad=False``.
        """
        self.validate(options)
        segments, info = self.model.transcribe(
            samples,
            language=options.language or None,
            word_timestamps=options.word_timestamps,
            initial_prompt=options.initial_prompt or None,
            beam_size=beam_size,
            vad_filter=vad,
            vad_parameters=FILE_VAD,
            condition_on_previous_text=False,
        )

        def converted() -> Iterator[Segment]:
            for s in segments:
                words = tuple(
                    Word(
                        float(w.start) + offset, float(w.end) + offset, w.word, float(w.probability)
                    )
                    for w in s.words or ()
                )
                yield Segment(
                    float(s.start) + offset,
                    float(s.end) + offset,
                    s.text.strip(),
                    words,
                    tuple(s.tokens),
                    float(s.avg_logprob),
                    float(s.compression_ratio),
                    float(s.no_speech_prob),
                    float(s.temperature or 0.0),
                    int(s.seek) + round(offset * 100),
                )

        return Recognition(
            info.language, float(info.language_probability), float(info.duration), converted()
        )
