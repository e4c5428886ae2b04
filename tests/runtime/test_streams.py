"""`coalesced`, every stream hop's read-ahead: what merges, what never does, and how it ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from genmesh.runtime.errors import ServiceError
from genmesh.runtime.streams import MAX_MERGED_BYTES, READ_AHEAD, READ_AHEAD_CHARS, coalesced
from genmesh.v1 import common_pb2


def text_of(events: list[common_pb2.StreamEvent]) -> str:
    return "".join(e.text_delta.text for e in events)


def delta(text: str = "", thoughts: str = "") -> common_pb2.StreamEvent:
    return common_pb2.StreamEvent(text_delta=common_pb2.TextDelta(text=text, thoughts=thoughts))


async def text_before(
    events: AsyncIterator[common_pb2.StreamEvent], error: type[Exception], match: str
) -> str:
    """The text `coalesced(events)` gave before it raised `error`."""
    received: list[common_pb2.StreamEvent] = []
    with pytest.raises(error, match=match):
        async for event in coalesced(events):
            received.append(event)
    return text_of(received)


async def source(
    events: list[common_pb2.StreamEvent], closed: list[bool]
) -> AsyncIterator[common_pb2.StreamEvent]:
    try:
        for event in events:
            yield event
    finally:
        closed.append(True)


async def test_a_consumer_that_keeps_up_gets_every_delta_as_it_came() -> None:
    async def paced() -> AsyncIterator[common_pb2.StreamEvent]:
        for text in "abc":
            yield delta(text)
            await asyncio.sleep(0)

    assert [e async for e in coalesced(paced())] == [delta("a"), delta("b"), delta("c")]


async def test_waiting_text_deltas_merge_and_nothing_else_does() -> None:
    progress = common_pb2.StreamEvent(progress=common_pb2.Progress(step=1, total_steps=2))
    final = common_pb2.StreamEvent(final=common_pb2.GenerateResponse(request_id="r"))
    events = [delta("a"), delta("b"), delta("c"), progress, delta("d"), delta("e"), final]
    got = [e async for e in coalesced(source(events, []))]
    assert got == [delta("abc"), progress, delta("de"), final]


async def test_a_prompts_scores_keep_their_delta() -> None:
    """The edge opens an echoed completion with them; merged into text, they were lost."""
    token = common_pb2.TokenLogprob(token="a", logprob=-0.5)
    scores = common_pb2.StreamEvent(text_delta=common_pb2.TextDelta(prompt_logprobs=[token]))
    events = [delta("a"), scores, delta("b"), delta("c")]
    got = [e async for e in coalesced(source(events, []))]
    assert got == [delta("a"), scores, delta("bc")]


async def test_thoughts_after_answer_text_are_not_merged_into_it() -> None:
    events = [delta("x"), delta(thoughts="p"), delta(thoughts="q"), delta("r"), delta(thoughts="s")]
    got = [e async for e in coalesced(source(events, []))]
    assert [(e.text_delta.thoughts, e.text_delta.text) for e in got] == [
        ("", "x"),
        ("pq", "r"),
        ("s", ""),
    ]


async def test_an_error_comes_after_the_events_before_it() -> None:
    async def failing() -> AsyncIterator[common_pb2.StreamEvent]:
        yield delta("a")
        yield delta("b")
        raise RuntimeError("backend gone")

    assert await text_before(failing(), RuntimeError, "backend gone") == "ab"


async def test_closing_early_closes_the_source() -> None:
    closed: list[bool] = []
    events = coalesced(source([delta(str(i)) for i in range(READ_AHEAD * 4)], closed))
    await anext(events)
    await events.aclose()
    assert closed == [True]  # by the time the close returns


async def test_a_merged_delta_stays_within_its_byte_budget() -> None:
    piece = "x" * 1000
    events = [delta(piece) for _ in range(READ_AHEAD)]
    got = [e async for e in coalesced(source(events, []))]
    assert text_of(got) == piece * READ_AHEAD
    assert len(got) > 1
    assert all(e.text_delta.ByteSize() <= MAX_MERGED_BYTES for e in got)


async def test_a_source_cancelled_from_within_is_unavailable_not_a_clean_end() -> None:
    async def cut() -> AsyncIterator[common_pb2.StreamEvent]:
        yield delta("a")
        raise asyncio.CancelledError  # e.g. its own call cancelled under it

    assert await text_before(cut(), ServiceError, "cancelled") == "a"


async def test_the_reader_stops_once_enough_text_waits() -> None:
    """Deltas that come merged already (from the hop before) are held by size, not by count."""
    produced = 0

    async def large() -> AsyncIterator[common_pb2.StreamEvent]:
        nonlocal produced
        for _ in range(1000):
            produced += 1
            yield delta("x" * 1000)

    events = coalesced(large())
    await anext(events)  # and then the consumer falls silent
    for _ in range(20):
        await asyncio.sleep(0)
    assert produced <= READ_AHEAD_CHARS // 1000 + 2
    await events.aclose()
