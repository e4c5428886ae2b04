"""Speech-to-text with Whisper base (CTranslate2) run by faster-whisper, loaded from local files.

faster-whisper decodes lazily: segments are yielded as each 30-second window is decoded, which
lets the service stream settled segments of a long file before the whole file is done.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
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
    """Recognised speech with times in seconds from the start of the audio."""

    start: float
    end: float
    text: str
    words: tuple[Word, ...] = field(default=())


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
                yield Segment(float(s.start) + offset, float(s.end) + offset, s.text.strip(), words)

        return Recognition(
            info.language, float(info.language_probability), float(info.duration), converted()
        )
