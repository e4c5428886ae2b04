"""tti test fixtures: one real tti service with the embedded model, called as the router does."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import pytest_asyncio
from PIL import Image

from genmesh.runtime.channel import channel_options, key_interceptors
from genmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from tests.support import INTERNAL_KEY, ServiceProcess

if TYPE_CHECKING:
    Stub = inference_pb2_grpc.InferenceServiceAsyncStub
Events = list[common_pb2.StreamEvent]
# Small limits so the over-limit cases are cheap to state; one run at a time, one waiting.
LIMITS = {"max_width": 128, "max_height": 128, "max_steps": 200, "max_images": 4}


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def stub(tti: ServiceProcess) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(
        tti.address, interceptors=key_interceptors(INTERNAL_KEY), options=channel_options(64 << 20)
    ) as channel:
        yield inference_pb2_grpc.InferenceServiceStub(channel)


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def image_item(data: bytes, role: common_pb2.InputRole.ValueType) -> common_pb2.InputItem:
    return common_pb2.InputItem(
        kind=common_pb2.CONTENT_KIND_IMAGE, role=role, data=data, mime_type="image/png"
    )


def request(prompt: str, *items: common_pb2.InputItem, **params: Any) -> common_pb2.GenerateRequest:
    task = common_pb2.TASK_IMAGE_EDIT if items else common_pb2.TASK_IMAGE
    text = common_pb2.InputItem(kind=common_pb2.CONTENT_KIND_TEXT, text=prompt)
    return common_pb2.GenerateRequest(
        request_id="tti-test",
        task=task,
        inputs=[text, *items],
        image=common_pb2.ImageParameters(**params),
    )


async def infer(
    stub: Stub, req: common_pb2.GenerateRequest, timeout: float | None = None
) -> Events:
    """Runs one request to the end; every event, the final one last."""
    call = stub.Infer(iter([inference_pb2.InferRequest(request=req)]), timeout=timeout)
    return [response.event async for response in call]


def final(events: Events) -> common_pb2.GenerateResponse:
    assert events and events[-1].WhichOneof("event") == "final", events[-1:]
    return events[-1].final


def images(events: Events) -> list[Image.Image]:
    return [decode(item.data) for item in final(events).outputs]


async def model_details(stub: Stub) -> dict[str, Any]:
    info = await stub.GetModelInfo(inference_pb2.InferenceServiceGetModelInfoRequest())
    return dict(info.model.details)


async def until(stub: Stub, **expected: float) -> None:
    """Polls the model's details until they show `expected` (e.g. active=0)."""
    for _ in range(3000):
        details = await model_details(stub)
        if all(details[k] == v for k, v in expected.items()):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"model details never reached {expected}: {details}")
