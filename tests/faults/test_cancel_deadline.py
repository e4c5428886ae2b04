"""Client cancellation and deadlines reach the engine: the ttt service ends the generation and
logs a structured "generation ended" event saying why; the mesh keeps serving. A deadline or an
in-band cancel ends the generation with a final message that keeps the partial output."""

from __future__ import annotations

import asyncio
import uuid

import grpc

from genmesh.client import text_request
from genmesh.v1 import common_pb2, generation_pb2, generation_pb2_grpc
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


async def test_deadline_ends_the_generation_with_its_partial_output(
    router: ServiceProcess, ttt: ServiceProcess
) -> None:
    """The backend stops just before the caller's deadline, so the answer still arrives: the
    text so far, FINISH_REASON_DEADLINE."""
    request_id = f"deadline-{uuid.uuid4().hex[:8]}"
    async with grpc.aio.insecure_channel(router.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        response = await stub.Generate(slow(1000, 50, request_id), metadata=KEY, timeout=8)
        assert response.finish_reason == common_pb2.FINISH_REASON_DEADLINE
        assert 0 < len(response.outputs[0].text) < 1000
        assert response.usage.completion_tokens == len(response.outputs[0].text)
        ended = ttt.wait_for_event("generation ended", request_id=request_id)
        assert ended["outcome"] == "deadline"
        response = await stub.Generate(text_request("on time"), metadata=KEY, timeout=30)
        assert response.outputs[0].text == "on time"


async def test_converse_cancel_reaches_the_backend_in_band(
    router: ServiceProcess, ttt: ServiceProcess
) -> None:
    """The router passes a conversation's cancel on in the backend stream, so the turn's final
    message is the backend's own, with its usage."""
    request_id = f"converse-{uuid.uuid4().hex[:8]}"
    config = common_pb2.GenerateRequest(request_id=request_id)
    config.extra.update({"delay_ms": 20})
    prompt = common_pb2.InputItem(kind=common_pb2.CONTENT_KIND_TEXT, text="x" * 1000)
    turn = generation_pb2.ConverseTurn(turn_id="t", inputs=[prompt])
    cancel = common_pb2.Control(action=common_pb2.Control.ACTION_CANCEL)
    async with grpc.aio.insecure_channel(router.address) as channel:
        call = generation_pb2_grpc.GenerationServiceStub(channel).Converse(metadata=KEY, timeout=60)
        await call.write(generation_pb2.ConverseRequest(config=config))
        await call.write(generation_pb2.ConverseRequest(turn=turn))
        first = await call.read()
        assert isinstance(first, generation_pb2.ConverseResponse)
        assert first.event.HasField("text_delta")
        await call.write(generation_pb2.ConverseRequest(control=cancel))
        await call.done_writing()
        finals = []
        while isinstance(response := await call.read(), generation_pb2.ConverseResponse):
            finals += [response.event.final] if response.event.HasField("final") else []
    [final] = finals
    assert final.finish_reason == common_pb2.FINISH_REASON_CANCELLED
    assert 0 < final.usage.completion_tokens < 1000
    assert final.usage.completion_tokens == len(final.outputs[0].text)
    ended = ttt.wait_for_event("generation ended", request_id=request_id)
    assert ended["outcome"] == "cancelled"


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
