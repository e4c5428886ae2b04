"""Voice activity detection over a live stream, cutting it into speech segments as they end.

faster-whisper's Silero VAD only scores whole recordings, so ``StreamingVad`` drives the same
bundled ONNX model window by window, carrying the recurrent state and the 64-sample context
between calls; fed the same audio in any chunking it gives the same scores as one call.
``Segmenter`` turns the scores into events with the hysteresis rules of Silero's
``get_speech_timestamps``: a segment opens above ``threshold``, and closes after
``min_silence_ms`` below ``neg_threshold``. Boundary events mark each opening and closing as it
happens, before any recognition, so a voice loop can react to speech at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from faster_whisper.vad import get_vad_model

from genmesh.audio.codecs import WHISPER_RATE, Samples

WINDOW = 512
CONTEXT = 64


class StreamingVad:
    """Speech probability per 32 ms window of 16 kHz audio, fed incrementally."""

    def __init__(self) -> None:
        self._session = get_vad_model().session
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    def push(self, samples: Samples) -> npt.NDArray[np.float32]:
        """Scores every window completed by ``samples``; a partial window waits for more."""
        audio = np.concatenate([self._pending, samples])
        n = len(audio) // WINDOW
        self._pending = audio[n * WINDOW :]
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        windows = audio[: n * WINDOW].reshape(n, WINDOW)
        contexts = np.concatenate([self._context[None, :], windows[:-1, -CONTEXT:]])
        self._context = windows[-1, -CONTEXT:].copy()
        batch = np.concatenate([contexts, windows], axis=1)
        out, self._h, self._c = self._session.run(
            None, {"input": batch, "h": self._h, "c": self._c}
        )
        probs: npt.NDArray[np.float32] = np.asarray(out, dtype=np.float32).reshape(-1)
        return probs


@dataclass(frozen=True)
class SegmenterConfig:
    """The thresholds are Silero's defaults; the silence, padding and lengths suit a spoken turn
    of a conversation rather than a recording's sentences."""

    # A window scored at or above this opens a segment (and keeps one open).
    threshold: float = 0.5
    # Only below this does silence start counting: scores in between keep a segment as it is.
    neg_threshold: float = 0.35
    # Silence that closes a segment: how long a turn waits after its speech ends.
    min_silence_ms: int = 500
    # Shorter segments are dropped as clicks and breaths.
    min_speech_ms: int = 250
    # Audio kept on each side of a segment, so recognition hears its first and last sounds.
    speech_pad_ms: int = 200
    # A longer segment is cut and a new one opened: Whisper hears 30 s at most.
    max_segment_s: float = 25.0
    # How often an open segment is recognised so far (a partial transcript).
    partial_every_s: float = 1.0


#: Audio to recognise; or a boundary, without audio: speech started, a segment ended (its final
#: event follows), or a segment ended too short to keep (nothing follows).
EventKind = Literal["speech", "started", "ended", "dropped"]


@dataclass(frozen=True)
class SpeechEvent:
    """A speech segment so far (``final`` False) or settled, or a boundary at ``start``;
    positions in samples from 0."""

    start: int
    end: int
    audio: Samples
    final: bool
    kind: EventKind = "speech"

    @classmethod
    def boundary(cls, kind: EventKind, position: int) -> SpeechEvent:
        return cls(position, position, np.zeros(0, dtype=np.float32), final=False, kind=kind)

    @property
    def start_s(self) -> float:
        return self.start / WHISPER_RATE

    @property
    def end_s(self) -> float:
        return self.end / WHISPER_RATE


class Segmenter:
    """Cuts a 16 kHz stream into speech segments; keeps only the audio it may still need."""

    def __init__(self, config: SegmenterConfig | None = None) -> None:
        self.config = c = config or SegmenterConfig()
        ms = WHISPER_RATE // 1000
        self._min_silence = c.min_silence_ms * ms
        self._min_speech = c.min_speech_ms * ms
        self._pad = c.speech_pad_ms * ms
        self._max_segment = int(c.max_segment_s * WHISPER_RATE)
        self._partial_every = int(c.partial_every_s * WHISPER_RATE)
        self._vad = StreamingVad()
        self._audio = np.zeros(0, dtype=np.float32)
        self._base = 0  # stream position of self._audio[0]
        self._scored = 0  # stream position up to which windows were scored
        self._start: int | None = None  # open segment's start (before padding)
        self._silence_from = 0  # where the current run of silence began, 0 if none
        self._last_partial = 0

    @property
    def position(self) -> int:
        return self._base + len(self._audio)

    def _slice(self, start: int, end: int) -> Samples:
        return self._audio[max(start - self._base, 0) : max(end - self._base, 0)].copy()

    def _close(self, end: int) -> list[SpeechEvent]:
        assert self._start is not None
        start, self._start, self._silence_from = self._start, None, 0
        if end - start < self._min_speech:
            return [SpeechEvent.boundary("dropped", end)]
        lo, hi = max(start - self._pad, 0), min(end + self._pad, self.position)
        return [
            SpeechEvent.boundary("ended", end),
            SpeechEvent(lo, hi, self._slice(lo, hi), final=True),
        ]

    def _open(self, pos: int) -> SpeechEvent:
        self._start, self._last_partial, self._silence_from = pos, pos, 0
        return SpeechEvent.boundary("started", pos)

    def push(self, samples: Samples) -> list[SpeechEvent]:
        """Feeds audio; returns the boundaries it crosses and the partial and final segments it
        completes, in order."""
        self._audio = np.concatenate([self._audio, samples])
        events: list[SpeechEvent] = []
        c = self.config
        for prob in self._vad.push(samples):
            pos = self._scored
            self._scored += WINDOW
            if self._start is None:
                if prob >= c.threshold:
                    events.append(self._open(pos))
                continue
            if prob >= c.threshold:
                self._silence_from = 0
            elif prob < c.neg_threshold and not self._silence_from:
                self._silence_from = pos
            if self._silence_from and pos - self._silence_from >= self._min_silence:
                events += self._close(self._silence_from)
            elif pos - self._start >= self._max_segment:
                events += self._close(pos)
                events.append(self._open(pos))
            elif pos - self._last_partial >= self._partial_every and not self._silence_from:
                self._last_partial = pos
                lo = max(self._start - self._pad, 0)
                events.append(SpeechEvent(lo, pos, self._slice(lo, pos), final=False))
        self._trim()
        return events

    def finish(self) -> list[SpeechEvent]:
        """Settles the open segment at the end of the input."""
        if self._start is None:
            return []
        return self._close(self._silence_from or self.position)

    def _trim(self) -> None:
        """Drops audio no future segment can include (before the open one, or the padding)."""
        keep_from = (self._start if self._start is not None else self._scored) - self._pad
        drop = max(keep_from - self._base, 0)
        if drop:
            self._audio = self._audio[drop:]
            self._base += drop
