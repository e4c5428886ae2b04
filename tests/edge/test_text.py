"""Chat and legacy completions through the edge with the official OpenAI SDK, sync and async,
against the echo engine (whose answer is the last user message, one character per token)."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from tests.edge.conftest import raw, sdk
from tests.support import ServiceProcess

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello mesh"}]


def test_models_are_the_bindings_and_their_models(client: OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert {"echo", "slow", "busy", "down"} <= set(ids)
    assert "echo/echo" in ids
    assert all(model.object == "model" for model in client.models.list())
    assert client.models.retrieve("echo").id == "echo"
    assert client.models.retrieve("echo/echo").id == "echo/echo"


def test_chat(client: OpenAI) -> None:
    completion = client.chat.completions.create(model="echo", messages=USER)
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == "hello mesh"
    assert choice.finish_reason == "stop"
    assert completion.object == "chat.completion"
    assert completion.model == "echo"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == len("hello mesh")
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_every_role_reaches_the_model_in_order(client: OpenAI) -> None:
    """The echo engine counts every message's characters as prompt tokens and answers the last
    user turn: so system, developer and assistant messages all arrived, as typed inputs."""
    completion = client.chat.completions.create(
        model="echo/echo",
        messages=[
            {"role": "system", "content": "abc"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "there"},
            {"role": "developer", "content": "de"},
            {"role": "user", "content": [{"type": "text", "text": "again"}]},
        ],
    )
    assert completion.choices[0].message.content == "again"
    assert completion.usage is not None
    # System and developer context merge into one system message ("abc\n\nde").
    assert completion.usage.prompt_tokens == len("abc\n\nde") + len("hi") + len("there") + 5


def streamed(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_chat_stream_with_usage(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="echo",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert streamed(chunks) == "hello mesh"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [f for f in finishes if f] == ["stop"]
    assert finishes[-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len("hello mesh")
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


@pytest.mark.parametrize("budget", ["max_tokens", "max_completion_tokens"])
def test_token_budget_ends_with_length(client: OpenAI, budget: str) -> None:
    completion = client.chat.completions.create(model="echo", messages=USER, **{budget: 4})  # type: ignore[call-overload]
    assert completion.choices[0].message.content == "hell"
    assert completion.choices[0].finish_reason == "length"
    chunks = list(
        client.chat.completions.create(model="echo", messages=USER, stream=True, **{budget: 4})  # type: ignore[call-overload]
    )
    assert streamed(chunks) == "hell"
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["length"]


def test_stop_sequences(client: OpenAI) -> None:
    for stop, text in (("mes", "hello "), (["xyz", " m"], "hello")):
        completion = client.chat.completions.create(model="echo", messages=USER, stop=stop)
        assert completion.choices[0].message.content == text
        assert completion.choices[0].finish_reason == "stop"


def test_sampling_parameters_are_accepted(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model="echo",
        messages=USER,
        temperature=0.2,
        top_p=0.9,
        seed=7,
        presence_penalty=0,
        frequency_penalty=0,
        response_format={"type": "text"},
        tool_choice="none",
        user="someone",
        extra_body={"top_k": 20, "repetition_penalty": 1.1},
    )
    assert completion.choices[0].message.content == "hello mesh"


def test_n_choices(client: OpenAI) -> None:
    completion = client.chat.completions.create(model="echo", messages=USER, n=3)
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert {c.message.content for c in completion.choices} == {"hello mesh"}
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3 * len("hello mesh")
    chunks = list(client.chat.completions.create(model="echo", messages=USER, n=2, stream=True))
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices[0].index == index]
        assert "".join(c.delta.content or "" for c in mine) == "hello mesh"
        assert [c.finish_reason for c in mine if c.finish_reason] == ["stop"]


async def test_async_chat_and_stream(aclient: AsyncOpenAI) -> None:
    completion = await aclient.chat.completions.create(model="echo", messages=USER)
    assert completion.choices[0].message.content == "hello mesh"
    stream = await aclient.chat.completions.create(model="echo", messages=USER, stream=True)
    chunks = [chunk async for chunk in stream]
    assert streamed(chunks) == "hello mesh"


async def test_eight_concurrent_streamed_chats_complete(aclient: AsyncOpenAI) -> None:
    async def chat(index: int) -> str:
        prompt = f"stream number {index} " * 10
        stream = await aclient.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": prompt}], stream=True
        )
        text = ""
        finishes = []
        async for chunk in stream:
            text += chunk.choices[0].delta.content or ""
            finishes += [chunk.choices[0].finish_reason] if chunk.choices[0].finish_reason else []
        assert finishes == ["stop"]
        return text

    texts = await asyncio.gather(*(chat(i) for i in range(8)))
    assert texts == [f"stream number {i} " * 10 for i in range(8)]


def test_completions(client: OpenAI) -> None:
    completion = client.completions.create(model="echo", prompt="once upon")
    assert completion.object == "text_completion"
    assert completion.choices[0].text == "once upon"
    assert completion.choices[0].finish_reason == "stop"
    several = client.completions.create(model="echo", prompt=["ab", "cd"], n=2, echo=True)
    assert [c.text for c in several.choices] == ["abab", "abab", "cdcd", "cdcd"]
    assert [c.index for c in several.choices] == [0, 1, 2, 3]
    assert several.usage is not None
    assert several.usage.prompt_tokens == 4
    assert several.usage.completion_tokens == 8
    # Token arrays: the echo's tokens are code points.
    ids = client.completions.create(model="echo", prompt=[[104, 105], [111]], echo=True)
    assert [c.text for c in ids.choices] == ["hihi", "oo"]


async def test_completions_stream(aclient: AsyncOpenAI) -> None:
    stream = await aclient.completions.create(
        model="echo",
        prompt="tale",
        echo=True,
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "taletal"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [f for f in finishes if f] == ["length"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3


def test_request_id_is_passed_on_and_returned(edge: ServiceProcess) -> None:
    with sdk(edge) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="echo", messages=USER, extra_headers={"X-Request-Id": "edge-id-1"}
        )
    assert raw.headers["x-request-id"] == "edge-id-1"
    assert raw.parse().id == "chatcmpl-edge-id-1"


def sse_events(body: bytes) -> list[str]:
    """The `data:` payloads of an SSE body, checking its framing: every event is data lines
    only (or a comment), separated by blank lines."""
    events = []
    for block in body.decode().split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        assert all(line.startswith("data: ") for line in lines), block
        events.append("\n".join(line.removeprefix("data: ") for line in lines))
    return events


@pytest.mark.parametrize("n", [1, 2])
def test_sse_framing_on_the_wire(edge: ServiceProcess, n: int) -> None:
    body = {
        "model": "echo",
        "messages": USER,
        "stream": True,
        "n": n,
        "stream_options": {"include_usage": True},
    }
    answer = raw(edge, "POST", "/v1/chat/completions", json.dumps(body).encode())
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = sse_events(answer.body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    *choices, usage = chunks
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == n * len("hello mesh")
    assert all("usage" not in c for c in choices)
    for index in range(n):
        mine = [c["choices"][0] for c in choices if c["choices"][0]["index"] == index]
        assert all(len(c["choices"]) == 1 for c in choices)
        assert [c["finish_reason"] for c in mine if c["finish_reason"]] == ["stop"]
        assert mine[-1]["finish_reason"] == "stop"
        assert "".join(c["delta"].get("content", "") for c in mine) == "hello mesh"


def test_sse_error_event_on_the_wire(edge: ServiceProcess, client: OpenAI) -> None:
    """Refused at once, a stream is an HTTP status; refused after its headers went out (here by
    the queue's timeout behind a long generation on the one-slot `late`), it ends with an error
    event in OpenAI's shape and no [DONE]."""
    body = {"model": "nope", "messages": USER, "stream": True}
    refused = raw(edge, "POST", "/v1/chat/completions", json.dumps(body).encode())
    assert refused.status == 404
    assert refused.json()["error"]["param"] == "model"
    long: list[ChatCompletionMessageParam] = [{"role": "user", "content": "z" * 1000}]
    holder = client.chat.completions.create(model="late", messages=long, stream=True)
    try:
        next(iter(holder))
        body = {"model": "late", "messages": USER, "stream": True}
        answer = raw(edge, "POST", "/v1/chat/completions", json.dumps(body).encode())
    finally:
        holder.close()
    assert answer.status == 200
    events = sse_events(answer.body)
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "rate_limit_error"


def test_vllm_min_tokens_and_ignore_eos(client: OpenAI) -> None:
    """The echo repeats its prompt on to min_tokens (its end of text held off), or max_tokens."""
    held = client.completions.create(
        model="echo", prompt="ab", max_tokens=10, extra_body={"min_tokens": 7}
    )
    assert held.choices[0].text == "abababa"
    endless = client.completions.create(
        model="echo", prompt="ab", max_tokens=5, extra_body={"ignore_eos": True}
    )
    assert endless.choices[0].text == "ababa"
    assert endless.choices[0].finish_reason == "length"
    unset = client.completions.create(
        model="echo", prompt="ab", extra_body={"min_tokens": None, "ignore_eos": None}
    )
    assert unset.choices[0].text == "ab"
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(
            model="echo", prompt="ab", max_tokens=5, extra_body={"min_tokens": 6}
        )
    assert caught.value.body["param"] == "min_tokens"  # type: ignore[index]
