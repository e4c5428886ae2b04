"""How a generation ends when it does not end by itself: the deadline, an in-band cancel, or an
engine failing part-way; each keeps the partial output in the final message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from genmesh.client import text_request
from genmesh.v1 import common_pb2, inference_pb2
from tests.ttt.conftest import Inference
from tests.ttt.test_admission import infer, slow_echo

Responses = list[inference_pb2.InferResponse]


def text(responses: Responses) -> str:
    return "".join(r.event.text_delta.text for r in responses)


async def collect(
    inference: Inference, messages: Iterator[inference_pb2.InferRequest], timeout: float = 30
) -> Responses:
    call = inference.stub.Infer(messages, metadata=inference.metadata, timeout=timeout)
    return [response async for response in call]


async def test_deadline_ends_the_generation_with_its_partial_output(inference: Inference) -> None:
    # 256 characters (the default max_tokens) at 50 ms each would take 12.8 s; the call allows 8,
    # and the service stops 0.8 s early: time for the final message on a busy machine.
    responses = await collect(inference, infer(slow_echo("x" * 1000, 50)), timeout=8)
    final = responses[-1].event.final
    assert final.finish_reason == common_pb2.FINISH_REASON_DEADLINE
    streamed = text(responses[:-1])
    assert 0 < len(streamed) < 1000
    assert final.outputs[0].text == streamed
    assert final.usage.completion_tokens == len(streamed)
    await inference.until_idle("echo")


async def test_in_band_cancel_keeps_the_partial_output(inference: Inference) -> None:
    async def messages() -> AsyncIterator[inference_pb2.InferRequest]:
        yield inference_pb2.InferRequest(request=slow_echo("y" * 1000, 20))
        await first_delta.wait()
        cancel = common_pb2.Control(action=common_pb2.Control.ACTION_CANCEL)
        yield inference_pb2.InferRequest(control=cancel)

    first_delta = asyncio.Event()
    responses: Responses = []
    async for response in inference.stub.Infer(messages(), metadata=inference.metadata):
        responses.append(response)
        first_delta.set()
    final = responses[-1].event.final
    assert final.finish_reason == common_pb2.FINISH_REASON_CANCELLED
    assert 0 < len(final.outputs[0].text) < 1000
    assert final.outputs[0].text == text(responses[:-1])
    await inference.until_idle("echo")


async def test_engine_failure_mid_stream_is_finish_reason_error(inference: Inference) -> None:
    request = text_request("abcdefghij", model="echo")
    request.extra.update({"fail_after": 4})
    responses = await collect(inference, infer(request))
    final = responses[-1].event.final
    assert final.finish_reason == common_pb2.FINISH_REASON_ERROR
    assert final.outputs[0].text == "abcd" == text(responses[:-1])
    assert final.usage.completion_tokens == 4
    [info] = [r.event.info for r in responses if r.event.HasField("info")]
    assert "failure injected" in info.message
    assert info.details["reason"] == "ENGINE_FAILED"
    # The service goes on serving.
    again = await collect(inference, infer(text_request("fine", model="echo")))
    assert again[-1].event.final.outputs[0].text == "fine"


async def test_generate_answers_with_the_final_result_alone(inference: Inference) -> None:
    """InferenceService.Generate, the router's way to a unary generation: Infer's final event as
    the one answer, an engine failing part-way included; a bad request is refused the same way."""
    whole = inference_pb2.InferenceServiceGenerateRequest
    answer = await inference.stub.Generate(
        whole(request=text_request("hello", model="echo")), metadata=inference.metadata
    )
    assert answer.response.outputs[0].text == "hello"
    assert answer.response.finish_reason == common_pb2.FINISH_REASON_STOP
    assert answer.response.usage.completion_tokens == 5
    assert answer.response.timings.first_token.ToNanoseconds() > 0
    assert answer.response.timings.first_token.ToNanoseconds() <= (
        answer.response.timings.total.ToNanoseconds()
    )

    failing = text_request("abcdefghij", model="echo")
    failing.extra.update({"fail_after": 4})
    answer = await inference.stub.Generate(whole(request=failing), metadata=inference.metadata)
    assert answer.response.finish_reason == common_pb2.FINISH_REASON_ERROR
    assert answer.response.outputs[0].text == "abcd"

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await inference.stub.Generate(whole(request=text_request("hi", model="nope")))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await inference.stub.Generate(
            whole(request=text_request("hi", model="nope")), metadata=inference.metadata
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    await inference.until_idle("echo")
