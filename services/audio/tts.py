"""Text-to-speech with a Piper VITS voice, run by onnxruntime through piper-tts.

Text is split into sentences here rather than inside Piper so that each streamed chunk can say
which text it speaks, and so the first sentence is heard while later ones are still synthesised.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from piper import PiperVoice, SynthesisConfig

from genmesh.audio.assets import PiperVoiceFiles, piper_voice
from genmesh.audio.codecs import Samples
from genmesh.audio.sentences import split_sentences

MIN_SPEED, MAX_SPEED = 0.25, 4.0
MAX_NOISE = 2.0


class SpeechInputError(ValueError):
    """Parameters or text the voice cannot speak; `field` names the offending request field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class SpeechOptions:
    voice: str = ""
    speed: float = 1.0
    noise: float | None = None


@dataclass(frozen=True)
class Sentence:
    """One synthesised sentence: its text and its samples at the voice's native rate."""

    text: str
    samples: Samples


class PiperTTS:
    """One loaded Piper voice. ``synthesize`` blocks; callers run it in a worker thread."""

    engine = "piper"

    def __init__(self, files: PiperVoiceFiles | None = None) -> None:
        self.files = files or piper_voice()
        self._voice: PiperVoice | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.files.name

    @property
    def voices(self) -> list[str]:
        return [self.files.name]

    @property
    def loaded(self) -> bool:
        return self._voice is not None

    @property
    def voice(self) -> PiperVoice:
        if self._voice is None:
            with self._lock:
                if self._voice is None:
                    self._voice = PiperVoice.load(self.files.model, self.files.config)
        return self._voice

    @property
    def sample_rate(self) -> int:
        return self.voice.config.sample_rate

    @property
    def language(self) -> str:
        return self.voice.config.espeak_voice.split("-")[0]

    @property
    def size_bytes(self) -> int:
        return self.files.model.stat().st_size

    def load(self) -> None:
        """Loads the voice and warms the phonemiser so the first request is not slow."""
        list(self.voice.synthesize("Ready."))

    def validate(self, text: str, options: SpeechOptions) -> list[str]:
        """The sentences to speak; raises SpeechInputError before any work starts."""
        if options.voice and options.voice not in self.voices:
            raise SpeechInputError(
                "speech.voice", f"unknown voice {options.voice!r}; voices: {self.voices}"
            )
        if not MIN_SPEED <= options.speed <= MAX_SPEED:
            raise SpeechInputError("speech.speed", f"speed must be in {MIN_SPEED}..{MAX_SPEED}")
        if options.noise is not None and not 0.0 <= options.noise <= MAX_NOISE:
            raise SpeechInputError("speech.noise", f"noise must be in 0..{MAX_NOISE}")
        if "\x00" in text:
            raise SpeechInputError("inputs", "the text has a NUL character")
        sentences = split_sentences(text)
        # Punctuation alone ("...", "-") has no phonemes: Piper would answer with no audio.
        if not any(any(self.voice.phonemize(s)) for s in sentences):
            raise SpeechInputError("inputs", "no text to speak: the text has no words")
        return sentences

    def synthesize(self, sentence: str, options: SpeechOptions) -> Sentence:
        """Speaks one sentence (Piper may still split it further; the pieces are joined)."""
        config = SynthesisConfig(length_scale=1.0 / options.speed, noise_scale=options.noise)
        pieces = [c.audio_float_array for c in self.voice.synthesize(sentence, config)]
        samples = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        return Sentence(sentence, samples.astype(np.float32, copy=False))

    def stream(self, text: str, options: SpeechOptions) -> Iterator[Sentence]:
        """Sentences as they are synthesised, lazily."""
        for sentence in self.validate(text, options):
            yield self.synthesize(sentence, options)
