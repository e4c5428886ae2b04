"""Admission: the voice runs one synthesis at a time with one more queued; beyond that the
service answers RESOURCE_EXHAUSTED with a retry delay, and serves again once there is room."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc
import pytest

from genmesh.client import error_details
from genmesh.v1 import inference_pb2, inference_pb2_grpc
from tests.audio.conftest import final, infer, speech_request
from tests.audio.test_speech import SENTENCES

if TYPE_CHECKING:
    Stub = inference_pb2_grpc.InferenceServiceAsyncStub


def speak(
    stub: Stub, text: str
) -> grpc.aio.StreamStreamCall[inference_pb2.InferRequest, inference_pb2.InferResponse]:
    return stub.Infer(iter([inference_pb2.InferRequest(request=speech_request(text))]))


async def until_load(stub: Stub, **expected: int) -> None:
    """Polls the voice's model info until its load figures are as expected."""
    for _ in range(2000):
        info = await stub.GetModelInfo(inference_pb2.InferenceServiceGetModelInfoRequest())
        details = dict(info.model.details)
        if all(details[key] == value for key, value in expected.items()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the voice never reached {expected}")


async def test_full_queue_is_resource_exhausted_with_retry_info(stub: Stub) -> None:
    running = speak(stub, " ".join(SENTENCES * 4))
    await anext(aiter(running))  # its first event comes once it holds the voice
    waiting = speak(stub, "I wait my turn.")
    await until_load(stub, active=1, queued=1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await infer(stub, speech_request("There is no room for me."))
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.reason == "QUEUE_FULL"
    assert details.retry_after is not None and details.retry_after > 0
    running.cancel()
    waiting.cancel()
    await until_load(stub, active=0, queued=0)
    assert final(await infer(stub, speech_request("Room again."))).outputs[0].data
