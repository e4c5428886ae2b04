"""Per-model admission control: a concurrency limit with a bounded, timed FIFO queue.

An engine can only run so many generations at once (llama.cpp: one per context); beyond that,
requests wait in a queue of bounded length for a bounded time. When the queue is full or the wait
times out the caller gets RESOURCE_EXHAUSTED with a RetryInfo delay estimated from how long
recent generations held their slot, so clients back off instead of piling up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from genmesh.runtime import errors, metrics

_MIN_RETRY = 0.1


class Slots:
    """`concurrency` running at once, at most `queue_size` waiting, each at most `timeout` s."""

    def __init__(
        self, name: str, concurrency: int, queue_size: int, timeout: float, kind: str = "model"
    ) -> None:
        self.name = name
        self.kind = kind
        self.concurrency = concurrency
        self.queue_size = queue_size
        self.timeout = timeout
        self._free = asyncio.Semaphore(concurrency)
        self.active = 0
        self.waiting = 0
        self._mean_hold = 1.0
        metrics.track_queue(name, lambda: self.waiting)

    def retry_after(self) -> float:
        """Seconds until a slot is likely free for a newcomer at the back of the queue."""
        return max(_MIN_RETRY, self._mean_hold * (self.waiting + 1) / self.concurrency)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Holds a slot for the body; yields the seconds spent queueing."""
        arrived = time.perf_counter()
        if self._free.locked() and self.waiting >= self.queue_size:
            raise errors.resource_exhausted(
                f"{self.kind} '{self.name}' is busy: {self.active} running, {self.waiting} queued",
                self.retry_after(),
            )
        self.waiting += 1
        try:
            # Not asyncio.wait_for: on Python 3.11 it drops a cancel that lands as the slot is
            # granted, and a cancelled call would then run to its end for nobody.
            async with asyncio.timeout(self.timeout):
                await self._free.acquire()
        except TimeoutError:
            raise errors.resource_exhausted(
                f"{self.kind} '{self.name}' is busy: no slot within {self.timeout:g} s",
                self.retry_after(),
                reason="QUEUE_TIMEOUT",
            ) from None
        finally:
            self.waiting -= 1
        started = time.perf_counter()
        self.active += 1
        try:
            yield started - arrived
        finally:
            self.active -= 1
            self._free.release()
            self._mean_hold = 0.8 * self._mean_hold + 0.2 * (time.perf_counter() - started)
