"""GenerateStream relays the backend stream faithfully, merging text deltas only when they wait.

The router reads the backend ahead of the client; text deltas that pile up while the client is
slow go out merged (see genmesh.runtime.streams). These tests pin down what must not change:
the text and the thoughts, their order, the final event (last, separate, with usage and finish
reason) and cancellation reaching the engine.
"""

from __future__ import annotations

import asyncio

import grpc

from genmesh.client import Client, text_request
from genmesh.runtime.streams import READ_AHEAD
from genmesh.v1 import common_pb2, generation_pb2, generation_pb2_grpc
from tests.support import API_KEY, ServiceProcess

KEY = (("x-api-key", API_KEY),)
# A client that takes in at most about one message ahead of what it has read: with BDP probing
# off, the router's writes wait for every read, as they would for a slow client on a slow link.
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1)]


def echo(prompt: str, repeat: int = 1) -> common_pb2.GenerateRequest:
    request = text_request(prompt, parameters=common_pb2.TextParameters(max_tokens=1_000_000))
    request.extra.update({"repeat": repeat})
    return request


def text_of(events: list[common_pb2.StreamEvent]) -> str:
    return "".join(e.text_delta.text for e in events)


def assert_final_last(events: list[common_pb2.StreamEvent], text: str) -> None:
    """Every event but the last is a text delta; the last is the final result, alone."""
    *deltas, last = events
    assert all(e.WhichOneof("event") == "text_delta" for e in deltas)
    assert last.WhichOneof("event") == "final"
    final = last.final
    assert final.outputs[0].text == text
    assert final.finish_reason == common_pb2.FINISH_REASON_STOP
    assert final.usage.completion_tokens == len(text)
    assert final.usage.prompt_tokens > 0


async def slow_reader(
    router: ServiceProcess, request: common_pb2.GenerateRequest
) -> list[common_pb2.StreamEvent]:
    """Reads the first event, stalls while the backend keeps producing, then reads the rest."""
    async with grpc.aio.insecure_channel(router.address, options=SMALL_WINDOW) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        opening = generation_pb2.GenerateStreamRequest(request=request)
        responses = aiter(stub.GenerateStream(opening, metadata=KEY, timeout=120))
        first = await anext(responses)
        await asyncio.sleep(0.5)
        return [first.event, *[r.event async for r in responses]]


async def test_long_stream_text_adds_up_to_the_whole_echo(client: Client) -> None:
    prompt = "the whole echo, every character of it; "
    events = [e async for e in client.generate_stream(echo(prompt, repeat=200))]
    assert text_of(events[:-1]) == prompt * 200
    assert_final_last(events, prompt * 200)


async def test_a_slow_client_gets_fewer_larger_deltas_with_the_same_text(
    router: ServiceProcess,
) -> None:
    prompt = "0123456789"
    events = await slow_reader(router, echo(prompt, repeat=300))
    deltas = events[:-1]
    assert text_of(deltas) == prompt * 300
    assert len(deltas) < len(prompt) * 300
    assert max(len(e.text_delta.text) for e in deltas) > 1
    # Each hop (the service, the router) merges at most READ_AHEAD waiting deltas into one.
    assert max(len(e.text_delta.text) for e in deltas) <= READ_AHEAD**2
    assert_final_last(events, prompt * 300)


async def test_merged_thoughts_stay_ahead_of_the_answer(router: ServiceProcess) -> None:
    thoughts, answer = "t" * 400, "a" * 400
    events = await slow_reader(router, echo(f"<think>{thoughts}</think>{answer}"))
    deltas = [e.text_delta for e in events[:-1]]
    assert "".join(d.thoughts for d in deltas) == thoughts
    assert "".join(d.text for d in deltas) == answer
    first_answer = next(i for i, d in enumerate(deltas) if d.text)
    assert not any(d.thoughts for d in deltas[first_answer + 1 :])
    assert events[-1].final.outputs[0].thoughts == thoughts


async def test_cancelling_a_stalled_client_reaches_the_engine(
    router: ServiceProcess, ttt: ServiceProcess
) -> None:
    """The client stops reading: the router's write waits and its reader stops at the read-ahead
    limit. A cancel then must still stop the backend."""
    request = echo("stalled ", repeat=100_000)
    request.request_id = "stalled-cancel-1"
    async with grpc.aio.insecure_channel(router.address, options=SMALL_WINDOW) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        opening = generation_pb2.GenerateStreamRequest(request=request)
        call = stub.GenerateStream(opening, metadata=KEY, timeout=120)
        await anext(aiter(call))
        await asyncio.sleep(0.5)
        call.cancel()
    ended = ttt.wait_for_event("generation ended", request_id="stalled-cancel-1")
    assert ended["outcome"] == "cancelled by client or deadline"
    assert ended["completion_tokens"] < len("stalled ") * 100_000
