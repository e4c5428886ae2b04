"""256 concurrent streams through one router: no errors, bounded memory; and a consumer that
stops reading holds the backend back (flow control) instead of filling the router's memory."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from genmesh.client import text_request
from genmesh.v1 import generation_pb2, generation_pb2_grpc
from tests.load.driver import KEY, rss_mb, run_streams
from tests.support import ServiceProcess

pytestmark = pytest.mark.slow

# Headroom for the router's steady state with 256 streams open (buffers, per-call objects).
RSS_GROWTH_LIMIT_MB = 150
# A stalled reader may pin the HTTP/2 flow-control windows' worth of messages, no more.
STALLED_GROWTH_LIMIT_MB = 40


async def test_256_concurrent_streams(load_mesh: ServiceProcess) -> None:
    warm = await run_streams(load_mesh.address, load_mesh.popen.pid, streams=16, seconds=1)
    assert not warm.errors
    result = await run_streams(load_mesh.address, load_mesh.popen.pid, streams=256, seconds=8)
    assert result.errors == []
    assert result.requests >= 256
    assert result.rss_after_mb - warm.rss_after_mb < RSS_GROWTH_LIMIT_MB, result.rss_mb


async def test_stalled_consumer_does_not_grow_router_memory(load_mesh: ServiceProcess) -> None:
    """A stream of millions of chunks whose reader stops after the first one."""
    request = text_request("y" * 100)
    request.extra.update({"repeat": 10_000})
    request.text.max_tokens = 1_000_000
    opening = generation_pb2.GenerateStreamRequest(request=request)
    async with grpc.aio.insecure_channel(load_mesh.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        call = stub.GenerateStream(opening, metadata=KEY, timeout=120)
        await anext(aiter(call))
        before = rss_mb(load_mesh.popen.pid)
        samples = []
        for _ in range(16):
            await asyncio.sleep(0.5)
            samples.append(rss_mb(load_mesh.popen.pid))
        call.cancel()
    assert max(samples) - before < STALLED_GROWTH_LIMIT_MB, (before, samples)
