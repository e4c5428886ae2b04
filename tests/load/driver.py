"""Concurrent streams through a router, for the load test and bench/load.py.

Each of `streams` workers sends GenerateStream requests back to back until the time is up and
checks every answer; the router's resident memory is sampled throughout.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc
import psutil

from genmesh.client import text_request
from genmesh.v1 import generation_pb2, generation_pb2_grpc
from tests.support import API_KEY

KEY = (("x-api-key", API_KEY),)
CHANNELS = 8


@dataclass
class LoadResult:
    streams: int
    seconds: float
    requests: int = 0
    chunks: int = 0
    errors: list[str] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)

    @property
    def rss_before_mb(self) -> float:
        return self.rss_mb[0]

    @property
    def rss_peak_mb(self) -> float:
        return max(self.rss_mb)

    @property
    def rss_after_mb(self) -> float:
        return self.rss_mb[-1]


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


async def sample_rss(pid: int, into: list[float], stop: asyncio.Event, every: float = 0.5) -> None:
    while not stop.is_set():
        into.append(rss_mb(pid))
        await asyncio.sleep(every)


async def run_streams(
    address: str,
    router_pid: int,
    streams: int,
    seconds: float,
    prompt: str = "load " * 8,
    delay_ms: int = 10,
) -> LoadResult:
    """`streams` concurrent streams for `seconds`; requests that started finish."""
    result = LoadResult(streams, seconds)
    request = text_request(prompt)
    request.extra.update({"delay_ms": delay_ms})
    opening = generation_pb2.GenerateStreamRequest(request=request)
    channels = [grpc.aio.insecure_channel(address) for _ in range(CHANNELS)]
    stubs = [generation_pb2_grpc.GenerationServiceStub(c) for c in channels]
    end = time.monotonic() + seconds

    async def worker(index: int) -> None:
        stub = stubs[index % CHANNELS]
        while time.monotonic() < end:
            text = []
            try:
                async for response in stub.GenerateStream(opening, metadata=KEY, timeout=300):
                    result.chunks += 1
                    text.append(response.event.text_delta.text)
            except grpc.aio.AioRpcError as error:
                result.errors.append(f"{error.code().name}: {error.details()}")
                continue
            result.requests += 1
            if "".join(text) != prompt:
                result.errors.append(f"wrong answer: {''.join(text)!r}")

    stop = asyncio.Event()
    sampler = asyncio.ensure_future(sample_rss(router_pid, result.rss_mb, stop))
    try:
        await asyncio.gather(*(worker(i) for i in range(streams)))
    finally:
        stop.set()
        await sampler
        result.rss_mb.append(rss_mb(router_pid))
        for channel in channels:
            await channel.close()
    return result
