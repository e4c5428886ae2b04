"""Helpers for router tests: echo requests, waiting for settled state, and a call of every
public RPC with the key scope it needs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.message import Message

from genmesh.client import text_request
from genmesh.v1 import (
    agent_pb2,
    catalog_pb2,
    common_pb2,
    embedding_pb2,
    generation_pb2,
    program_pb2,
    tokenizer_pb2,
)


def slow(prompt: str, delay_ms: int, repeat: int = 1, **fields: str) -> common_pb2.GenerateRequest:
    """An echo request that streams one character every `delay_ms`."""
    request = text_request(
        prompt, parameters=common_pb2.TextParameters(max_tokens=100_000), **fields
    )
    request.extra.update({"delay_ms": delay_ms, "repeat": repeat})
    return request


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    """Waits until `check` holds (state that settles in the background, e.g. health)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not hold in time")
        await asyncio.sleep(0.05)


Call = Callable[[grpc.aio.Channel, tuple[tuple[str, str], ...]], Awaitable[Any]]
PROMPT = text_request("scoped")
PROGRAM = program_pb2.Program(code="1 + 1")
STREAM = generation_pb2.GenerateStreamRequest(request=PROMPT)
RUN = agent_pb2.RunRequest(start=agent_pb2.RunStart(program=PROGRAM))
EMBED_INPUT = embedding_pb2.EmbedInput(text="scoped")


async def drain(call: Any) -> None:
    async for _ in call:
        pass


async def opened(call: Any, first: Any) -> None:
    """Runs a bidi call that takes one message: the router sends headers once it admits a call,
    so waiting for them means the message is never written into a call being refused (which
    grpc.aio can report as INTERNAL instead of the refusal)."""
    await call.initial_metadata()
    if not call.done():
        await call.write(first)
        await call.done_writing()
    await drain(call)


def call(name: str, request: Message) -> Call:
    """Calls the public RPC `name` ("Service.Method") with `request` (a bidi call's first
    message) as its kind needs, and reads every answer; only the status matters here."""
    method = descriptor_pool.Default().FindMethodByName(f"genmesh.v1.{name}")
    path = f"/genmesh.v1.{name.replace('.', '/')}"
    serialize = type(request).SerializeToString

    async def invoke(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> None:
        if method.client_streaming:
            bidi: grpc.aio.StreamStreamMultiCallable[Message, bytes] = channel.stream_stream(
                path, request_serializer=serialize
            )
            await opened(bidi(metadata=metadata), request)
        elif method.server_streaming:
            streaming: grpc.aio.UnaryStreamMultiCallable[Message, bytes] = channel.unary_stream(
                path, request_serializer=serialize
            )
            await drain(streaming(request, metadata=metadata))
        else:
            unary: grpc.aio.UnaryUnaryMultiCallable[Message, bytes] = channel.unary_unary(
                path, request_serializer=serialize
            )
            await unary(request, metadata=metadata)

    return invoke


# Every public RPC, with the scope it needs (None: any valid key) and a request it accepts.
CALLS: dict[str, tuple[str | None, Call]] = {
    name: (scope, call(name, request))
    for name, scope, request in [
        ("GenerationService.Generate", "generate", PROMPT),
        ("GenerationService.GenerateStream", "generate", STREAM),
        ("GenerationService.Converse", "generate", generation_pb2.ConverseRequest(config=PROMPT)),
        ("TokenizerService.Tokenize", "generate", tokenizer_pb2.TokenizeRequest(text="hi")),
        ("TokenizerService.Detokenize", "generate", tokenizer_pb2.DetokenizeRequest(tokens=[104])),
        ("TokenizerService.CountTokens", "generate", tokenizer_pb2.CountTokensRequest(text="hi")),
        ("AgentService.Run", "agent", RUN),
        ("AgentService.Execute", "agent", agent_pb2.ExecuteRequest(program=PROGRAM)),
        ("CatalogService.ListBindings", None, catalog_pb2.ListBindingsRequest()),
        ("CatalogService.ListPersonalities", None, catalog_pb2.ListPersonalitiesRequest()),
        ("CatalogService.ListFunctions", None, catalog_pb2.ListFunctionsRequest()),
        ("CatalogService.ListModels", None, catalog_pb2.ListModelsRequest()),
        ("CatalogService.GetModelInfo", None, catalog_pb2.GetModelInfoRequest(binding="echo")),
        ("EmbeddingService.Embed", "generate", embedding_pb2.EmbedRequest(inputs=[EMBED_INPUT])),
    ]
}
