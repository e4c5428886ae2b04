"""A ttt service with the embedded SmolLM2 on llama.cpp (plus echo), and a router in front."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from genmesh.v1 import inference_pb2, inference_pb2_grpc
from tests.support import INTERNAL_KEY, ServiceProcess, client_fixture, idle

CONTEXT = 2048
SMOL = "smollm2"


def smol_model(**overrides: Any) -> dict[str, Any]:
    return {
        "name": SMOL,
        "engine": "llama.cpp",
        "options": {"context_size": CONTEXT},
        "concurrency": 1,
        "queue_size": 4,
        "system_prompt": "You are a helpful assistant.",
        **overrides,
    }


def binding(name: str, address: str, model: str) -> dict[str, Any]:
    return {"name": name, "tasks": ["text"], "addresses": [address], "engine": "", "model": model}


mesh = client_fixture("smol_router")


class Inference:
    """The ttt service called directly, as the router does."""

    metadata = (("x-api-key", INTERNAL_KEY),)

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub: inference_pb2_grpc.InferenceServiceAsyncStub = (
            inference_pb2_grpc.InferenceServiceStub(channel)
        )

    async def info(self, model: str) -> inference_pb2.InferenceServiceGetModelInfoResponse:
        request = inference_pb2.InferenceServiceGetModelInfoRequest(model=model)
        response: inference_pb2.InferenceServiceGetModelInfoResponse = await self.stub.GetModelInfo(
            request, metadata=self.metadata
        )
        return response

    async def until_idle(self, model: str) -> dict[str, Any]:
        """Polls the model's info until no generation holds, waits for or runs on it; returns its
        details."""
        for _ in range(2000):
            details = dict((await self.info(model)).model.details)
            if idle(details):
                return details
            await asyncio.sleep(0.01)
        raise AssertionError(f"{model} never became idle")


@pytest.fixture
async def inference(smol_ttt: ServiceProcess) -> AsyncIterator[Inference]:
    async with grpc.aio.insecure_channel(smol_ttt.address) as channel:
        yield Inference(channel)
