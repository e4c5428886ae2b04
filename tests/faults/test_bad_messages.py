"""Malformed and oversized messages at the router and at a modality service get a clear status,
and the process keeps serving."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from genmesh.client import error_details, text_request
from genmesh.v1 import generation_pb2_grpc
from tests.faults.conftest import KEY, generate
from tests.support import API_KEY, INTERNAL_KEY, ServiceProcess

# Not a protobuf message: a field tag with wire type 7, which does not exist.
MALFORMED = b"\x0f\xff\xff\xff\xff\xff"


async def send_raw(channel: grpc.aio.Channel, method: str, metadata: Any) -> None:
    """Sends MALFORMED as the raw request of `method` and reads the answer."""
    responses: Any
    if method.endswith("/Generate"):
        unary: Any = channel.unary_unary(method)
        await unary(MALFORMED, metadata=metadata, timeout=10)
        return
    if method.endswith("/GenerateStream"):
        server_streaming: Any = channel.unary_stream(method)
        responses = server_streaming(MALFORMED, metadata=metadata, timeout=10)
    else:
        bidi: Any = channel.stream_stream(method)
        responses = bidi(iter([MALFORMED]), metadata=metadata, timeout=10)
    async for _ in responses:
        pass


@pytest.mark.parametrize(
    ("fixture", "method", "key"),
    [
        ("router", "/genmesh.v1.GenerationService/Generate", API_KEY),
        ("router", "/genmesh.v1.GenerationService/GenerateStream", API_KEY),
        ("ttt", "/genmesh.v1.InferenceService/Infer", INTERNAL_KEY),
    ],
)
async def test_malformed_bytes_are_refused(
    fixture: str, method: str, key: str, request: pytest.FixtureRequest, router: ServiceProcess
) -> None:
    process: ServiceProcess = request.getfixturevalue(fixture)
    async with grpc.aio.insecure_channel(process.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await send_raw(channel, method, (("x-api-key", key),))
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_details(failure.value).reason == "MALFORMED_MESSAGE"
    async with grpc.aio.insecure_channel(router.address) as channel:
        assert await generate(channel, "still serving") == "still serving"


async def test_oversized_messages_are_refused(router: ServiceProcess) -> None:
    async with grpc.aio.insecure_channel(
        router.address, options=[("grpc.max_send_message_length", 64 << 20)]
    ) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        # Over the router's request limit (8 MiB) but under its transport limit: details.
        with pytest.raises(grpc.aio.AioRpcError) as over_request:
            await stub.Generate(text_request("x" * (10 << 20)), metadata=KEY, timeout=30)
        assert over_request.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # Over the transport limit (16 MiB): refused before it is even parsed.
        with pytest.raises(grpc.aio.AioRpcError) as over_transport:
            await stub.Generate(text_request("x" * (20 << 20)), metadata=KEY, timeout=30)
        assert over_transport.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await generate(channel, "still serving") == "still serving"
