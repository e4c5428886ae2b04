"""Structured output, tool calls, logprobs and n through the edge with the official OpenAI SDK,
sync and async: real behaviour on SmolLM2 (llama.cpp), where the constraints hold whatever the
tiny model would have said; protocol details on the echo engine (whose answer is the last user
message, one character per token, a `<tool_call>` block in it a call)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any

import jsonschema
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import (
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
    ChatCompletionToolMessageParam,
    ChatCompletionToolParam,
)
from pydantic import BaseModel, Field

from tests.edge.conftest import async_sdk, raw, sdk, streamed_completion, whole_completion
from tests.schemas import PERSON, SCHEMAS
from tests.support import ServiceProcess

TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": SCHEMAS["get_weather"],
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The local time in a timezone.",
            "parameters": SCHEMAS["get_time"],
        },
    },
]
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


# The SmolLM2 requests' model and seed, so their outputs repeat.
SMOL: dict[str, Any] = {"model": "smollm2", "seed": 7}


def user(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def json_schema_format(schema: dict[str, Any]) -> Any:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


def assembled(chunks: list[ChatCompletionChunk]) -> dict[tuple[int, int], dict[str, str]]:
    """Tool calls put together from streamed deltas, by (choice, call), checking OpenAI's
    shape: a call's first delta has its id, type and name, the next ones only arguments."""
    calls: dict[tuple[int, int], dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for piece in choice.delta.tool_calls or ():
                key = (choice.index, piece.index)
                assert piece.function is not None
                if key not in calls:
                    assert piece.id and piece.type == "function" and piece.function.name
                    calls[key] = {"id": piece.id, "name": piece.function.name, "arguments": ""}
                else:
                    assert piece.id is None and piece.function.name is None
                calls[key]["arguments"] += piece.function.arguments or ""
    return calls


def function_calls(message: ChatCompletionMessage) -> list[ChatCompletionMessageFunctionToolCall]:
    calls = message.tool_calls or []
    assert all(isinstance(c, ChatCompletionMessageFunctionToolCall) for c in calls)
    return [c for c in calls if isinstance(c, ChatCompletionMessageFunctionToolCall)]


def finishes(chunks: list[ChatCompletionChunk]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            if choice.finish_reason:
                found.setdefault(choice.index, []).append(choice.finish_reason)
    return found


def streamed_tokens(chunks: list[ChatCompletionChunk]) -> list[str]:
    """The tokens the chunks' logprobs name, in order, across choices."""
    return [
        entry.token
        for chunk in chunks
        for choice in chunk.choices
        if choice.logprobs and choice.logprobs.content
        for entry in choice.logprobs.content
    ]


@pytest.fixture(scope="module")
def smol(smol_edge: ServiceProcess) -> Iterator[OpenAI]:
    with sdk(smol_edge, timeout=300.0) as opened:
        yield opened


# SmolLM2 on llama.cpp.


def test_json_schema_output_validates(smol: OpenAI) -> None:
    completion = smol.chat.completions.create(
        **SMOL,
        messages=user("Describe a person."),
        response_format=json_schema_format(PERSON),
        max_tokens=80,
    )
    jsonschema.validate(json.loads(completion.choices[0].message.content or ""), PERSON)
    assert completion.choices[0].finish_reason == "stop"


def test_json_object_output_is_an_object(smol: OpenAI) -> None:
    completion = smol.chat.completions.create(
        **SMOL,
        messages=user("Give me a JSON object about a cat."),
        response_format={"type": "json_object"},
        max_tokens=60,
    )
    if completion.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)
    else:
        assert (completion.choices[0].message.content or "").startswith("{")


class Person(BaseModel):
    name: Annotated[str, Field(max_length=12)]
    age: int


def test_parse_with_a_pydantic_model(smol: OpenAI) -> None:
    completion = smol.chat.completions.parse(
        **SMOL,
        messages=user("Describe a person."),
        response_format=Person,
        max_tokens=80,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Person)
    assert len(parsed.name) <= 12


async def test_required_tool_call_streams_then_the_result_is_answered(
    smol_edge: ServiceProcess,
) -> None:
    async with async_sdk(smol_edge, timeout=300.0) as client:
        question = user("What is the weather in Paris?")
        stream = await client.chat.completions.create(
            **SMOL,
            messages=question,
            tools=TOOLS,
            tool_choice="required",
            max_tokens=120,
            stream=True,
        )
        chunks = [chunk async for chunk in stream]
        assert finishes(chunks) == {0: ["tool_calls"]}
        calls = list(assembled(chunks).values())
        assert calls
        for call in calls:
            jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])
        assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        results: list[ChatCompletionToolMessageParam] = [
            {"role": "tool", "tool_call_id": c["id"], "content": "sunny, 21 C"} for c in calls
        ]
        history: list[ChatCompletionMessageParam] = [
            *question,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": c["id"],
                        "type": "function",
                        "function": {"name": c["name"], "arguments": c["arguments"]},
                    }
                    for c in calls
                ],
            },
            *results,
        ]
        answered = await client.chat.completions.create(
            **SMOL,
            messages=history,
            tools=TOOLS,
            tool_choice="none",
            max_tokens=40,
        )
    choice = answered.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert choice.message.content and not choice.message.tool_calls


def test_named_tool_call(smol: OpenAI) -> None:
    completion = smol.chat.completions.create(
        **SMOL,
        messages=user("What time is it in Tokyo?"),
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        parallel_tool_calls=False,
        max_tokens=120,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = function_calls(choice.message)
    assert call.type == "function" and call.id
    assert call.function.name == "get_time"
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS["get_time"])


def test_auto_tool_choice_answers_either_way(smol: OpenAI) -> None:
    completion = smol.chat.completions.create(
        **SMOL,
        messages=user("What is the weather in Paris?"),
        tools=TOOLS,
        max_tokens=120,
    )
    choice = completion.choices[0]
    if choice.finish_reason == "tool_calls":
        for call in function_calls(choice.message):
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    else:
        assert choice.message.content


async def test_logprobs_shape_in_results_and_chunks(smol_edge: ServiceProcess) -> None:
    async with async_sdk(smol_edge, timeout=300.0) as client:
        completion = await client.chat.completions.create(
            **SMOL,
            messages=user("Say hello."),
            max_tokens=8,
            logprobs=True,
            top_logprobs=3,
        )
        stream = await client.chat.completions.create(
            **SMOL,
            messages=user("Say hello."),
            max_tokens=8,
            logprobs=True,
            top_logprobs=3,
            stream=True,
        )
        chunks = [chunk async for chunk in stream]
    choice = completion.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    content = choice.logprobs.content
    assert completion.usage is not None
    assert len(content) == completion.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0
        top = [alt.logprob for alt in entry.top_logprobs]
        assert len(top) == 3 and top == sorted(top, reverse=True)
        assert top[0] >= entry.logprob
    assert bytes(b for entry in content for b in entry.bytes or []).decode() == (
        choice.message.content
    )
    assert streamed_tokens(chunks) == [entry.token for entry in content]


def test_a_prompt_over_the_context_is_context_length_exceeded(smol: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        smol.chat.completions.create(model="smollm2", messages=user("lorem ipsum " * 2048))
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "context_length_exceeded"
    assert body["param"] == "messages"


# The echo engine.


def test_echo_json_schema_is_served_or_refused(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model="echo",
        messages=user('{"name": "Ada", "age": 36}'),
        response_format=json_schema_format(PERSON),
    )
    jsonschema.validate(json.loads(completion.choices[0].message.content or ""), PERSON)
    # The echo engine cannot make "not json" valid: FAILED_PRECONDITION, a 400 naming it.
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="echo", messages=user("not json"), response_format={"type": "json_object"}
        )
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == "response_format"


def test_echo_tool_call_whole_and_streamed(client: OpenAI) -> None:
    completion = client.chat.completions.create(model="echo", messages=user(CALL), tools=TOOLS)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = function_calls(choice.message)
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    chunks = list(
        client.chat.completions.create(model="echo", messages=user(CALL), tools=TOOLS, stream=True)
    )
    (streamed,) = assembled(chunks).values()
    assert streamed["name"] == "get_weather"
    assert json.loads(streamed["arguments"]) == {"city": "Paris"}
    assert finishes(chunks) == {0: ["tool_calls"]}


async def test_echo_tool_result_is_sent_back(aclient: AsyncOpenAI) -> None:
    completion = await aclient.chat.completions.create(
        model="echo",
        messages=[
            {"role": "user", "content": "what now?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
        tools=TOOLS,
    )
    assert "sunny" in (completion.choices[0].message.content or "")


async def test_echo_n_with_tools_and_logprobs_carry_their_index(aclient: AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        model="echo",
        messages=user(CALL),
        tools=TOOLS,
        n=2,
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert set(assembled(chunks)) == {(0, 0), (1, 0)}
    assert finishes(chunks) == {0: ["tool_calls"], 1: ["tool_calls"]}
    completion = await aclient.chat.completions.create(
        model="echo", messages=user("ab"), n=2, logprobs=True, top_logprobs=2
    )
    for choice in completion.choices:
        assert choice.logprobs is not None and choice.logprobs.content
        tokens = [(e.token, e.logprob, e.bytes) for e in choice.logprobs.content]
        assert tokens == [("a", 0, [97]), ("b", 0, [98])]
        assert [len(e.top_logprobs) for e in choice.logprobs.content] == [1, 1]
    assert [c.index for c in completion.choices] == [0, 1]
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 2
    assert completion.usage.completion_tokens == 4


def test_echo_logprobs_in_chunks(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="echo", messages=user("hey"), logprobs=True, stream=True
        )
    )
    assert streamed_tokens(chunks) == ["h", "e", "y"]
    plain = client.chat.completions.create(model="echo", messages=user("hey"))
    assert plain.choices[0].logprobs is None


def test_legacy_completion_logprobs(client: OpenAI) -> None:
    completion = client.completions.create(
        model="echo", prompt=["ab", "cd"], logprobs=1, echo=True, n=2
    )
    assert [c.text for c in completion.choices] == ["abab", "abab", "cdcd", "cdcd"]
    for choice, prompt in zip(completion.choices, ["ab", "ab", "cd", "cd"], strict=True):
        logprobs = choice.logprobs
        assert logprobs is not None
        # The echoed prompt's tokens first, scored (nothing predicts the first), as OpenAI's.
        assert logprobs.tokens == list(prompt + prompt)
        assert logprobs.token_logprobs == [None, 0, 0, 0]
        assert logprobs.top_logprobs == [None, {prompt[1]: 0}, {prompt[0]: 0}, {prompt[1]: 0}]
        assert logprobs.text_offset == [0, 1, 2, 3]
    streamed = client.completions.create(
        model="echo", prompt=["ab", "cd"], logprobs=1, echo=True, n=2, stream=True
    )
    # vLLM's shape: each choice opens with its prompt and the prompt's scores.
    assert streamed_completion(streamed) == whole_completion(completion)
    stream = client.completions.create(model="echo", prompt="xyz", logprobs=0, stream=True)
    offsets = [
        offset
        for chunk in stream
        for c in chunk.choices
        if c.logprobs
        for offset in c.logprobs.text_offset or []
    ]
    assert offsets == [0, 1, 2]


@pytest.mark.parametrize(
    ("options", "param"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "no-such-type"}},
                }
            },
            "response_format",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
            "tools[0].function.name",
        ),
        ({"tools": [{"type": "function"}]}, "tools[0].function"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"messages": [*user("x"), {"role": "tool", "content": "r"}]}, "messages[1].tool_call_id"),
        (
            {"messages": [*user("x"), {"role": "user", "content": "y", "tool_calls": []}]},
            None,
        ),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}]},
            "messages[0].tool_calls[0].function",
        ),
    ],
)
def test_bad_structured_requests_are_400_naming_the_parameter(
    edge: ServiceProcess, options: dict[str, Any], param: str | None
) -> None:
    body = {"model": "echo", "messages": user("x"), **options}
    answer = raw(edge, "POST", "/v1/chat/completions", json.dumps(body).encode())
    if param is None:  # an empty list of calls is no call
        assert answer.status == 200, answer.body
        return
    assert answer.status == 400, answer.body
    assert answer.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "logprobs": 21}, "logprobs"),
        ({"prompt": "x", "logprobs": -1}, "logprobs"),
    ],
)
def test_bad_legacy_logprobs_are_400(
    edge: ServiceProcess, body: dict[str, Any], param: str
) -> None:
    answer = raw(edge, "POST", "/v1/completions", json.dumps({"model": "echo", **body}).encode())
    assert answer.status == 400, answer.body
    assert answer.json()["error"]["param"] == param
