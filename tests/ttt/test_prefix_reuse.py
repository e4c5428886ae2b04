"""Prefix reuse in the llama.cpp engine's batching: a prompt that starts as a slot's last one did
prefills only the rest, and answers as it does without reuse."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest

from genmesh.client import text_request
from genmesh.v1 import common_pb2
from tests.support import ServiceProcess
from tests.ttt.conftest import SMOL, Inference, smol_model
from tests.ttt.test_batching import generate

# A long system prompt the requests share (~150 tokens), then questions that differ.
SYSTEM = "You are a careful assistant for a bakery. " + " ".join(
    f"Rule {i}: answer about bread number {i} politely and briefly." for i in range(10)
)
QUESTIONS = ["Which flour makes rye bread?", "How long does dough rise?"]


@pytest.fixture(scope="module")
def services() -> Iterator[dict[bool, ServiceProcess]]:
    """Two ttt services of two slots each: with prefix reuse and without."""
    pytest.importorskip("llama_cpp")
    started: dict[bool, ServiceProcess] = {}
    try:
        for reuse in (True, False):
            options = {"context_size": 1024, "batch_tokens": 128, "prefix_reuse": reuse}
            model = smol_model(concurrency=2, queue_size=4, options=options)
            started[reuse] = ServiceProcess("ttt", {"models": [model]})
        yield started
    finally:
        for process in started.values():
            process.terminate()


def request(question: str) -> common_pb2.GenerateRequest:
    params = common_pb2.TextParameters(temperature=0, max_tokens=16)
    return text_request(question, model=SMOL, system=SYSTEM, parameters=params)


async def answers(process: ServiceProcess) -> tuple[list[str], int]:
    """Each question answered one after the other, then all at once, and how many prompt tokens
    the model reused meanwhile."""
    async with grpc.aio.insecure_channel(process.address) as channel:
        ttt = Inference(channel)
        texts = [await generate(ttt, request(q)) for q in QUESTIONS]
        texts += await asyncio.gather(*(generate(ttt, request(q)) for q in QUESTIONS))
        reused = (await ttt.until_idle(SMOL))["reused_prompt_tokens"]
    return texts, int(reused)


async def test_reused_prefix_gives_the_same_text(services: dict[bool, ServiceProcess]) -> None:
    with_reuse, reused = await answers(services[True])
    without, none_reused = await answers(services[False])
    assert with_reuse == without
    assert with_reuse[: len(QUESTIONS)] == with_reuse[len(QUESTIONS) :]
    assert none_reused == 0
    # Every request but the first on each slot found the system prompt in its slot's cache.
    assert reused > (2 * len(QUESTIONS) - 2) * 120
