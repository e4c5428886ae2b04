"""Helpers for fault tests: slow echo requests, streams and their text."""

from __future__ import annotations

from typing import Any

import grpc

from genmesh.client import text_request
from genmesh.v1 import common_pb2, generation_pb2, generation_pb2_grpc
from tests.support import API_KEY

KEY = (("x-api-key", API_KEY),)
Stream = grpc.aio.UnaryStreamCall[Any, generation_pb2.GenerateStreamResponse]


def slow(chars: int, delay_ms: int, request_id: str = "") -> common_pb2.GenerateRequest:
    """An echo of `chars` characters, one every `delay_ms`."""
    request = text_request("x" * chars, request_id=request_id)
    request.extra.update({"delay_ms": delay_ms})
    return request


def stream(channel: grpc.aio.Channel, request: common_pb2.GenerateRequest) -> Stream:
    stub = generation_pb2_grpc.GenerationServiceStub(channel)
    opening = generation_pb2.GenerateStreamRequest(request=request)
    return stub.GenerateStream(opening, metadata=KEY, timeout=60)


async def generate(channel: grpc.aio.Channel, prompt: str) -> str:
    stub = generation_pb2_grpc.GenerationServiceStub(channel)
    response = await stub.Generate(text_request(prompt), metadata=KEY, timeout=30)
    return response.outputs[0].text


async def read_text(call: Stream) -> str:
    return "".join([r.event.text_delta.text async for r in call])
