"""Per-model admission control and output filters, on the echo model of the SmolLM2 service."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import struct_pb2

from genmesh.client import Client, error_details, text_request
from genmesh.v1 import common_pb2, inference_pb2
from tests.ttt.conftest import Inference


def infer(request: common_pb2.GenerateRequest) -> Iterator[inference_pb2.InferRequest]:
    return iter([inference_pb2.InferRequest(request=request)])


def slow_echo(text: str, delay_ms: int) -> common_pb2.GenerateRequest:
    extra = struct_pb2.Struct()
    extra.update({"delay_ms": delay_ms})
    request = text_request(text, model="echo")
    request.extra.CopyFrom(extra)
    return request


async def test_full_queue_is_resource_exhausted_with_retry_info(inference: Inference) -> None:
    # echo admits one generation and queues none: a second one while it runs is refused.
    busy = inference.stub.Infer(infer(slow_echo("x" * 400, 20)), metadata=inference.metadata)
    first = await anext(aiter(busy))
    assert first.event.HasField("text_delta")
    second = inference.stub.Infer(
        infer(text_request("hi", model="echo")), metadata=inference.metadata
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in second:
            pass
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.reason == "QUEUE_FULL"
    assert details.retry_after is not None and details.retry_after > 0
    busy.cancel()


async def test_slot_is_free_again_after_a_cancel(inference: Inference) -> None:
    busy = inference.stub.Infer(infer(slow_echo("y" * 400, 20)), metadata=inference.metadata)
    await anext(aiter(busy))
    busy.cancel()
    await inference.until_idle("echo")
    responses = [
        r
        async for r in inference.stub.Infer(
            infer(text_request("again", model="echo")), metadata=inference.metadata
        )
    ]
    assert responses[-1].event.final.outputs[0].text == "again"


async def test_think_is_moved_to_thoughts(mesh: Client) -> None:
    request = text_request("<think>the user wants a greeting</think>Hello!", binding="echo-smol")
    deltas = []
    final = None
    async for event in mesh.generate_stream(request):
        if event.HasField("text_delta"):
            deltas.append(event.text_delta)
        elif event.HasField("final"):
            final = event.final
    assert final is not None
    assert final.outputs[0].text == "Hello!"
    assert final.outputs[0].thoughts == "the user wants a greeting"
    assert "".join(d.thoughts for d in deltas) == "the user wants a greeting"
    assert all("<think>" not in d.text and "</think>" not in d.text for d in deltas)


async def test_unknown_model_is_not_found(inference: Inference) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await inference.info("no-such-model")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
