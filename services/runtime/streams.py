"""Event streams read ahead and merged: every hop of a generation's stream (a service's Infer to
its caller, the router to its client) reads its source in a task of its own, so the next read
overlaps the write in flight instead of waiting for it. Text deltas that pile up meanwhile,
because the reader's consumer takes them more slowly than the source produces them, go out as
one merged delta: the same text in the same order, in fewer messages. A delta is never held back
to wait for more; other events (progress, audio, images, info, the final result) and the delta
carrying a prompt's scores are never merged.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable

from genmesh.runtime import errors
from genmesh.v1 import common_pb2

# How many text deltas may wait for the client before the reader stops reading the backend (which
# then feels the client's flow control as before). Other events wait one at a time: audio and
# images can be large.
READ_AHEAD = 256
# ... or once this much text waits: a delta that arrives already merged (from the hop before) can be
# large, and a slow client must not make a hop hold more than this per stream.
READ_AHEAD_CHARS = 64 * 1024
# A merged delta stops growing past this size, so one message never nears a receiver's limit (4 MiB
# by default) however far its reader falls behind, logprobs included.
MAX_MERGED_BYTES = 64 * 1024


def _chars(event: common_pb2.StreamEvent) -> int:
    delta = event.text_delta
    return len(delta.text) + len(delta.thoughts)


def _mergeable(event: common_pb2.StreamEvent) -> bool:
    return event.HasField("text_delta") and not event.text_delta.prompt_logprobs


def _next_merged(waiting: deque[common_pb2.StreamEvent]) -> common_pb2.StreamEvent:
    """The first waiting event; a text delta takes the text deltas of the same choice queued
    right behind it along, with their logprobs (up to thoughts that would otherwise move ahead
    of answer text)."""
    event = waiting.popleft()
    if not (waiting and _mergeable(event) and _mergeable(waiting[0])):
        return event
    first = event.text_delta
    texts, thoughts, logprobs = [first.text], [first.thoughts], list(first.logprobs)
    answered = bool(texts[0])
    size = first.ByteSize()
    while waiting and _mergeable(waiting[0]):
        following = waiting[0].text_delta
        if (answered and following.thoughts) or following.index != first.index:
            break
        size += following.ByteSize()
        if size > MAX_MERGED_BYTES:
            break
        texts.append(following.text)
        thoughts.append(following.thoughts)
        logprobs.extend(following.logprobs)
        answered = answered or bool(following.text)
        waiting.popleft()
    merged = common_pb2.TextDelta(
        text="".join(texts), thoughts="".join(thoughts), index=first.index, logprobs=logprobs
    )
    return common_pb2.StreamEvent(text_delta=merged)


async def coalesced(
    events: AsyncIterable[common_pb2.StreamEvent],
) -> AsyncGenerator[common_pb2.StreamEvent, None]:
    """`events`, read ahead in a task; text deltas that wait for the consumer come out merged.

    The source's error, if any, is raised after the events that came before it. Closing this
    generator cancels the reader, which closes the source (and so cancels the backend call, or
    stops the engine) before the close returns.
    """
    waiting: deque[common_pb2.StreamEvent] = deque()
    held = 0  # characters of the waiting text deltas
    arrived, drained = asyncio.Event(), asyncio.Event()
    failure: list[Exception] = []

    async def read() -> None:
        nonlocal held
        stream = aiter(events)
        try:
            async for event in stream:
                waiting.append(event)
                arrived.set()
                held += _chars(event)
                text = event.HasField("text_delta")
                if text and len(waiting) < READ_AHEAD and held < READ_AHEAD_CHARS:
                    continue
                drained.clear()
                await drained.wait()
        except Exception as exc:
            failure.append(exc)
        finally:
            arrived.set()
            if isinstance(stream, AsyncGenerator):
                await stream.aclose()

    reader = asyncio.ensure_future(read())
    try:
        while True:
            await arrived.wait()
            arrived.clear()
            while waiting:
                event = _next_merged(waiting)
                held -= _chars(event)
                yield event
            drained.set()
            if reader.done():
                if failure:
                    raise failure[0]
                if reader.cancelled():  # by the source itself: it did not end, it was cut
                    raise errors.unavailable("the stream's source was cancelled")
                return
    finally:
        reader.cancel()
        await asyncio.wait({reader})
