"""Per-request stage timings (queue, first token, total, and the stages of the first token),
shared by every service."""

from __future__ import annotations

import time
from collections.abc import Mapping

from google.protobuf import duration_pb2

from genmesh.v1 import common_pb2


def duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


class Stopwatch:
    """Started when a request arrives; marks the end of queueing and the first output."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.queue_s = 0.0
        self.first_token_s: float | None = None

    def dequeued(self) -> None:
        self.queue_s = time.monotonic() - self.start

    def first_output(self) -> None:
        if self.first_token_s is None:
            self.first_token_s = time.monotonic() - self.start

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def timings(
        self, extra_queue_s: float = 0.0, stages: Mapping[str, float] | None = None
    ) -> common_pb2.Timings:
        """The figures, with `stages` (Timings field names, in seconds) measured elsewhere."""
        total = self.elapsed()
        timings = common_pb2.Timings(
            queue=duration(self.queue_s + extra_queue_s),
            first_token=duration(self.first_token_s if self.first_token_s is not None else total),
            total=duration(total),
        )
        for name, seconds in (stages or {}).items():
            getattr(timings, name).CopyFrom(duration(seconds))
        return timings

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The same figures as trailing metadata, in milliseconds."""
        first = self.first_token_s if self.first_token_s is not None else self.elapsed()
        return (
            ("x-timing-queue-ms", f"{self.queue_s * 1000:.3f}"),
            ("x-timing-first-token-ms", f"{first * 1000:.3f}"),
            ("x-timing-total-ms", f"{self.elapsed() * 1000:.3f}"),
        )
