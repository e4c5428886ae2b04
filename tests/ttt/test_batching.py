"""Continuous batching in the llama.cpp engine, through a ttt service with eight slots."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from genmesh.client import text_request
from genmesh.v1 import common_pb2, inference_pb2
from tests.support import ServiceProcess, serve
from tests.ttt.conftest import SMOL, Inference, smol_model

SLOTS = 8
CROWD = 32
Stream = grpc.aio.StreamStreamCall[inference_pb2.InferRequest, inference_pb2.InferResponse]


@pytest.fixture(scope="module")
def batch_ttt() -> Iterator[ServiceProcess]:
    pytest.importorskip("llama_cpp")
    # Eight slots of 1,024 tokens, prompts prefilled 128 tokens a step; a queue as long as the
    # largest crowd a test sends.
    options = {"context_size": 1024, "batch_tokens": 128}
    yield from serve(
        "ttt", {"models": [smol_model(concurrency=SLOTS, queue_size=CROWD, options=options)]}
    )


@pytest.fixture
async def batched(batch_ttt: ServiceProcess) -> AsyncIterator[Inference]:
    async with grpc.aio.insecure_channel(batch_ttt.address) as channel:
        yield Inference(channel)


def request(
    prompt: str, max_tokens: int, seed: int = 7, stop: tuple[str, ...] = ()
) -> common_pb2.GenerateRequest:
    params = common_pb2.TextParameters(
        temperature=0.8, seed=seed, max_tokens=max_tokens, stop=list(stop)
    )
    return text_request(prompt, model=SMOL, parameters=params)


def call(batched: Inference, message: common_pb2.GenerateRequest) -> Stream:
    return batched.stub.Infer(
        iter([inference_pb2.InferRequest(request=message)]), metadata=batched.metadata
    )


async def final(stream: Stream) -> common_pb2.GenerateResponse:
    async for response in stream:
        if response.event.HasField("final"):
            result: common_pb2.GenerateResponse = response.event.final
            return result
    raise AssertionError("the stream ended without a final event")


async def generate(batched: Inference, message: common_pb2.GenerateRequest) -> str:
    return (await final(call(batched, message))).outputs[0].text


def stories(count: int) -> list[str]:
    animals = ["cat", "dog", "owl", "fox", "bee", "cow", "eel", "yak", "ant", "elk"]
    return [f"Tell me a short story about a {a}." for a in animals[:count]]


async def test_model_reports_its_slots(batched: Inference) -> None:
    details = dict((await batched.info(SMOL)).model.details)
    assert details["batching"] is True
    assert details["slots"] == SLOTS
    assert details["concurrency"] == SLOTS


async def test_concurrent_streams_give_what_each_gives_alone(batched: Inference) -> None:
    prompts = stories(SLOTS)
    alone = [await generate(batched, request(p, 24)) for p in prompts]
    together = await asyncio.gather(*(generate(batched, request(p, 24)) for p in prompts))
    assert list(together) == alone
    assert len(set(alone)) > 1  # the prompts (and so the texts) differ per sequence


async def test_a_crowd_queues_for_the_slots_and_the_same_batch_gives_the_same_texts(
    batched: Inference,
) -> None:
    """Four times more streams than slots: the rest wait in the queue and are served as slots
    free, and greedy decoding gives each prompt the same text in a second crowd, whichever
    sequences it shared its steps with."""
    params = common_pb2.TextParameters(temperature=0, max_tokens=12)
    prompts = [f"Count from {i} to {i + 5}." for i in range(CROWD)]
    requests = [text_request(p, model=SMOL, parameters=params) for p in prompts]
    first = await asyncio.gather(*(final(call(batched, r)) for r in requests))
    again = await asyncio.gather(*(final(call(batched, r)) for r in reversed(requests)))
    assert all(r.usage.completion_tokens > 0 for r in first)
    assert max(r.timings.queue.ToMilliseconds() for r in first) > 0  # some of them waited
    texts = [r.outputs[0].text for r in first]
    assert [r.outputs[0].text for r in reversed(again)] == texts
    assert len(set(texts)) > 1


async def test_cancelled_stream_frees_its_slot(batched: Inference) -> None:
    streams = [call(batched, request(p, 64, seed=i)) for i, p in enumerate(stories(SLOTS))]
    for stream in streams:  # every slot is taken
        first = await anext(aiter(stream))
        assert first.event.HasField("text_delta")
    late = call(batched, request("Name a colour.", 8))  # waits in the queue for a slot
    streams[0].cancel()
    late_final = await final(late)
    assert late_final.usage.completion_tokens > 0
    rest = await asyncio.gather(*(final(s) for s in streams[1:]))
    for result in rest:  # the others went on to their full length
        assert result.finish_reason == common_pb2.FINISH_REASON_LENGTH
        assert result.usage.completion_tokens == 64
    assert (await batched.until_idle(SMOL))["active"] == 0


async def test_long_prompt_joins_while_others_stream(batched: Inference) -> None:
    long_prompt = (
        "Here are some notes about bread. "
        + " ".join(f"Note {i}: bread number {i} was baked with flour and water." for i in range(40))
        + " Summarise the notes in one sentence."
    )
    short = stories(3)
    alone = [await generate(batched, request(p, 32)) for p in short]
    long_alone = await generate(batched, request(long_prompt, 16))
    running = [call(batched, request(p, 32)) for p in short]
    for stream in running:  # they are streaming when the long prompt arrives
        await anext(aiter(stream))
    long_result = await final(call(batched, request(long_prompt, 16)))
    assert long_result.usage.prompt_tokens > 2 * 128  # it took several prefill chunks
    assert long_result.outputs[0].text == long_alone
    # The running streams went on undisturbed by the chunks prefilled between their tokens.
    assert [(await final(s)).outputs[0].text for s in running] == alone


async def test_stop_sequences_are_per_sequence(batched: Inference) -> None:
    prompt = stories(1)[0]
    full = await generate(batched, request(prompt, 40))
    words = full.split()
    stop = words[len(words) // 2]
    stopped, free = await asyncio.gather(
        final(call(batched, request(prompt, 40, stop=(stop,)))),
        final(call(batched, request(prompt, 40))),
    )
    assert stopped.finish_reason == common_pb2.FINISH_REASON_STOP_SEQUENCE
    assert stopped.stop_sequence == stop
    assert full.startswith(stopped.outputs[0].text)
    assert stop not in stopped.outputs[0].text
    assert free.outputs[0].text == full
