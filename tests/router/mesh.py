"""Helpers for router tests: echo requests, waiting for settled state, and a call of every
public RPC with the key scope it needs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from genmesh.client import text_request
from genmesh.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    generation_pb2,
    generation_pb2_grpc,
    program_pb2,
    tokenizer_pb2,
    tokenizer_pb2_grpc,
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


async def run_program(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> None:
    start = agent_pb2.RunRequest(start=agent_pb2.RunStart(program=PROGRAM))
    await opened(agent_pb2_grpc.AgentServiceStub(channel).Run(metadata=metadata), start)


# Every public RPC, with the scope it needs (None: any valid key).
CALLS: dict[str, tuple[str | None, Call]] = {
    "GenerationService.Generate": (
        "generate",
        lambda ch, md: generation_pb2_grpc.GenerationServiceStub(ch).Generate(PROMPT, metadata=md),
    ),
    "GenerationService.GenerateStream": (
        "generate",
        lambda ch, md: drain(
            generation_pb2_grpc.GenerationServiceStub(ch).GenerateStream(
                generation_pb2.GenerateStreamRequest(request=PROMPT), metadata=md
            )
        ),
    ),
    "GenerationService.Converse": (
        "generate",
        lambda ch, md: opened(
            generation_pb2_grpc.GenerationServiceStub(ch).Converse(metadata=md),
            generation_pb2.ConverseRequest(config=PROMPT),
        ),
    ),
    "TokenizerService.Tokenize": (
        "generate",
        lambda ch, md: tokenizer_pb2_grpc.TokenizerServiceStub(ch).Tokenize(
            tokenizer_pb2.TokenizeRequest(text="hi"), metadata=md
        ),
    ),
    "TokenizerService.Detokenize": (
        "generate",
        lambda ch, md: tokenizer_pb2_grpc.TokenizerServiceStub(ch).Detokenize(
            tokenizer_pb2.DetokenizeRequest(tokens=[104]), metadata=md
        ),
    ),
    "TokenizerService.CountTokens": (
        "generate",
        lambda ch, md: tokenizer_pb2_grpc.TokenizerServiceStub(ch).CountTokens(
            tokenizer_pb2.CountTokensRequest(text="hi"), metadata=md
        ),
    ),
    "AgentService.Run": ("agent", run_program),
    "AgentService.Execute": (
        "agent",
        lambda ch, md: agent_pb2_grpc.AgentServiceStub(ch).Execute(
            agent_pb2.ExecuteRequest(program=PROGRAM), metadata=md
        ),
    ),
    "CatalogService.ListBindings": (
        None,
        lambda ch, md: catalog_pb2_grpc.CatalogServiceStub(ch).ListBindings(
            catalog_pb2.ListBindingsRequest(), metadata=md
        ),
    ),
    "CatalogService.ListPersonalities": (
        None,
        lambda ch, md: catalog_pb2_grpc.CatalogServiceStub(ch).ListPersonalities(
            catalog_pb2.ListPersonalitiesRequest(), metadata=md
        ),
    ),
    "CatalogService.ListFunctions": (
        None,
        lambda ch, md: catalog_pb2_grpc.CatalogServiceStub(ch).ListFunctions(
            catalog_pb2.ListFunctionsRequest(), metadata=md
        ),
    ),
    "CatalogService.ListModels": (
        None,
        lambda ch, md: catalog_pb2_grpc.CatalogServiceStub(ch).ListModels(
            catalog_pb2.ListModelsRequest(), metadata=md
        ),
    ),
    "CatalogService.GetModelInfo": (
        None,
        lambda ch, md: catalog_pb2_grpc.CatalogServiceStub(ch).GetModelInfo(
            catalog_pb2.GetModelInfoRequest(binding="echo"), metadata=md
        ),
    ),
}
