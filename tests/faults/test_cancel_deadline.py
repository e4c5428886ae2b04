"""Client cancellation and deadlines reach the engine: the ttt service ends the generation and
logs a structured "generation ended" event saying why; the mesh keeps serving."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from genmesh.client import text_request
from genmesh.v1 import generation_pb2_grpc
from tests.faults.conftest import KEY, generate, slow, stream
from tests.support import ServiceProcess


async def test_client_cancel_stops_the_backend(router: ServiceProcess, ttt: ServiceProcess) -> None:
    request_id = f"cancel-{uuid.uuid4().hex[:8]}"
    async with grpc.aio.insecure_channel(router.address) as channel:
        call = stream(channel, slow(1000, 20, request_id))
        await anext(aiter(call))
        call.cancel()
        ended = ttt.wait_for_event("generation ended", request_id=request_id)
        assert "cancel" in ended["outcome"]
        assert ended["completion_tokens"] < 1000
        assert await generate(channel, "still here") == "still here"


async def test_deadline_stops_the_backend(router: ServiceProcess, ttt: ServiceProcess) -> None:
    request_id = f"deadline-{uuid.uuid4().hex[:8]}"
    async with grpc.aio.insecure_channel(router.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.Generate(slow(1000, 20, request_id), metadata=KEY, timeout=0.5)
        assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        ended = ttt.wait_for_event("generation ended", request_id=request_id)
        assert ended["outcome"] != "completed"
        assert ended["completion_tokens"] < 1000
        response = await stub.Generate(text_request("on time"), metadata=KEY, timeout=30)
        assert response.outputs[0].text == "on time"


async def test_cancel_of_a_stalled_stream_stops_the_backend(
    router: ServiceProcess, ttt: ServiceProcess
) -> None:
    """The client stops reading, so the backend is blocked on flow control when it cancels."""
    request_id = f"stalled-{uuid.uuid4().hex[:8]}"
    request = text_request("z" * 100, request_id=request_id)
    request.extra.update({"repeat": 10_000})
    request.text.max_tokens = 1_000_000
    async with grpc.aio.insecure_channel(router.address) as channel:
        call = stream(channel, request)
        await anext(aiter(call))
        await asyncio.sleep(2)
        call.cancel()
        ended = ttt.wait_for_event("generation ended", request_id=request_id)
        assert "cancel" in ended["outcome"]
        assert ended["completion_tokens"] < 1_000_000
