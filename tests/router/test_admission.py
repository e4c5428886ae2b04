"""Admission through the router: a concurrency limit, a bounded queue and a queue timeout,
whether the binding queues at the router or (by default) only the service does."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest

from genmesh.client import Client, error_details, text_request
from genmesh.v1 import common_pb2, generation_pb2
from tests.router.mesh import slow
from tests.support import API_KEY, ServiceProcess, echo_binding, router_config, serve

NARROW = {"concurrency": 1, "queue_size": 1, "queue_timeout_seconds": 2.0}


@pytest.fixture(scope="module", params=["router", "service"])
def narrow_router(request: pytest.FixtureRequest, ttt: ServiceProcess) -> Iterator[ServiceProcess]:
    """One request at a time, one more may wait, for at most 2 s: in the binding's own queue
    at the router, or (the router's default, no queue of its own) in the model's at ttt."""
    if request.param == "router":
        binding = {
            **echo_binding(ttt.address, name="narrow"),
            "max_concurrent": 1,
            "max_queue": NARROW["queue_size"],
            "queue_timeout_seconds": NARROW["queue_timeout_seconds"],
        }
        yield from serve("router", router_config([binding]))
        return
    model = {"name": "echo", "engine": "echo", **NARROW}
    narrow_ttt = ServiceProcess("ttt", {"models": [model]})
    try:
        yield from serve("router", router_config([echo_binding(narrow_ttt.address)]))
    finally:
        narrow_ttt.terminate()


async def test_full_queue_and_queue_timeout_are_resource_exhausted(
    narrow_router: ServiceProcess,
) -> None:
    async with Client(narrow_router.address, API_KEY) as client:
        running = client.generation.GenerateStream(
            generation_pb2.GenerateStreamRequest(request=slow("busy", delay_ms=50, repeat=100)),
            metadata=client.metadata,
        )
        first = await running.read()
        assert isinstance(first, generation_pb2.GenerateStreamResponse)
        assert first.event.HasField("text_delta")
        # Two more: whichever arrives first takes the one queue place and times out there, the
        # other finds the queue full.
        refused = await asyncio.gather(
            client.generate(text_request("waiting")),
            client.generate(text_request("no room")),
            return_exceptions=True,
        )
        reasons = [error_details(e) for e in refused if isinstance(e, grpc.aio.AioRpcError)]
        assert len(reasons) == 2
        assert sorted(d.reason for d in reasons) == ["QUEUE_FULL", "QUEUE_TIMEOUT"]
        for details in reasons:
            assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert details.retry_after is not None and details.retry_after > 0
        running.cancel()

        # Once the slot is free again, requests are served.
        response = await client.generate(text_request("served"))
        assert response.outputs[0].text == "served"


async def test_queue_time_is_reported(narrow_router: ServiceProcess) -> None:
    async with Client(narrow_router.address, API_KEY) as client:
        first = client.generation.GenerateStream(
            generation_pb2.GenerateStreamRequest(request=slow("ab", delay_ms=100, repeat=2)),
            metadata=client.metadata,
        )
        responses = [await first.read()]  # its first character: it holds the slot
        second = await client.generate(text_request("after"))
        while responses[-1] != grpc.aio.EOF:
            responses.append(await first.read())
        deltas = [
            r.event.text_delta.text
            for r in responses
            if isinstance(r, generation_pb2.GenerateStreamResponse)
        ]
        assert "".join(deltas) == "abab"
    assert second.outputs[0].text == "after"
    assert second.finish_reason == common_pb2.FINISH_REASON_STOP
    # It waited for the first request's slot, and says so.
    assert second.timings.queue.ToNanoseconds() > 0
    assert second.timings.total.ToNanoseconds() >= second.timings.queue.ToNanoseconds()
