"""Structured output, tool calls, logprobs and n choices through the router: real behaviour on
SmolLM2 (llama.cpp), protocol details on the echo engine, bad input on both, and one constrained
request over REST through the gateway."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest

from genmesh.client import (
    Client,
    error_details,
    json_schema,
    text_request,
    tool,
    tool_calls_item,
    tool_result,
)
from genmesh.v1 import common_pb2, generation_pb2
from tests.gateway.conftest import Rest, rest  # noqa: F401 - the gateway fixture
from tests.support import ServiceProcess, client_fixture, run_cli

smol = client_fixture("smol_router")
Mode = common_pb2.ToolChoice.Mode
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer"},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
SCHEMAS: dict[str, dict[str, Any]] = {
    "get_weather": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "get_time": {
        "type": "object",
        "properties": {"timezone": {"type": "string", "maxLength": 20}},
        "required": ["timezone"],
    },
}
WEATHER = tool("get_weather", "The current weather in a city.", SCHEMAS["get_weather"])
TIME = tool("get_time", "The local time in a timezone.", SCHEMAS["get_time"])
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


def params(**fields: Any) -> common_pb2.TextParameters:
    return common_pb2.TextParameters(seed=7, **fields)


async def stream(client: Client, request: common_pb2.GenerateRequest) -> list[Any]:
    call = client.generation.GenerateStream(
        generation_pb2.GenerateStreamRequest(request=request), metadata=client.metadata
    )
    return [response.event async for response in call]


async def refused(client: Client, request: common_pb2.GenerateRequest) -> tuple[Any, set[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.generate(request)
    return caught.value.code(), set(error_details(caught.value).violations)


def assembled(events: list[Any]) -> dict[tuple[int, int], dict[str, str]]:
    """Tool calls put together from their deltas, by (choice, call)."""
    calls: dict[tuple[int, int], dict[str, str]] = {}
    for event in events:
        if event.HasField("tool_call_delta"):
            delta = event.tool_call_delta
            key = (delta.index, delta.call_index)
            if key not in calls:
                assert delta.id and delta.name, "a call's first delta carries its id and name"
                calls[key] = {"id": delta.id, "name": delta.name, "arguments": ""}
            else:
                assert not delta.id and not delta.name
            calls[key]["arguments"] += delta.arguments
    return calls


# SmolLM2 on llama.cpp: the constraints hold whatever the tiny model would have said.


async def test_json_schema_output_validates(smol: Client) -> None:
    request = text_request(
        "Describe a person.", parameters=params(max_tokens=80, constraint=json_schema(PERSON))
    )
    response = await smol.generate(request)
    jsonschema.validate(json.loads(response.outputs[0].text), PERSON)
    assert response.finish_reason == common_pb2.FINISH_REASON_STOP


async def test_regex_output_matches_when_streamed(smol: Client) -> None:
    constraint = common_pb2.OutputConstraint(regex=r"[0-9]{3}-[0-9]{4}")
    events = await stream(
        smol, text_request("A phone number?", parameters=params(constraint=constraint))
    )
    text = "".join(e.text_delta.text for e in events if e.HasField("text_delta"))
    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", text)
    assert events[-1].final.outputs[0].text == text


async def test_choices_pick_one(smol: Client) -> None:
    choices = common_pb2.ChoiceList(choices=["red", "green", "blue"])
    constraint = common_pb2.OutputConstraint(choices=choices)
    response = await smol.generate(
        text_request("Which colour is the sky?", parameters=params(constraint=constraint))
    )
    assert response.outputs[0].text in {"red", "green", "blue"}


async def test_required_tool_call_is_valid_and_streams(smol: Client) -> None:
    request = text_request(
        "What is the weather in Paris?",
        parameters=params(
            max_tokens=120,
            tools=[WEATHER, TIME],
            tool_choice=common_pb2.ToolChoice(mode=Mode.MODE_REQUIRED),
        ),
    )
    events = await stream(smol, request)
    final = events[-1].final
    assert final.finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS
    calls = final.outputs[0].tool_calls
    assert calls and final.outputs[0].text == ""
    for call in calls:
        jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
    streamed = assembled(events)
    assert [c["id"] for c in streamed.values()] == [c.id for c in calls]
    assert [c["arguments"] for c in streamed.values()] == [c.arguments for c in calls]


async def test_named_tool_call_and_result_round_trip(smol: Client) -> None:
    parameters = params(
        max_tokens=120,
        tools=[WEATHER, TIME],
        tool_choice=common_pb2.ToolChoice(mode=Mode.MODE_NAMED, name="get_time"),
        parallel_tool_calls=False,
    )
    question = text_request("What time is it in Tokyo?", parameters=parameters)
    called = await smol.generate(question)
    (call,) = called.outputs[0].tool_calls
    assert call.name == "get_time" and call.id
    jsonschema.validate(json.loads(call.arguments), SCHEMAS["get_time"])
    follow_up = common_pb2.GenerateRequest()
    follow_up.CopyFrom(question)
    follow_up.text.tool_choice.mode = Mode.MODE_AUTO
    follow_up.text.max_tokens = 40
    follow_up.inputs.extend([tool_calls_item([call]), tool_result(call.id, "09:30 JST")])
    answered = await smol.generate(follow_up)
    assert answered.outputs[0].finish_reason in (
        common_pb2.FINISH_REASON_STOP,
        common_pb2.FINISH_REASON_LENGTH,
        common_pb2.FINISH_REASON_TOOL_CALLS,
    )
    assert answered.outputs[0].text or answered.outputs[0].tool_calls


async def test_logprobs_shape_and_order(smol: Client) -> None:
    request = text_request(
        "Say hello.", parameters=params(max_tokens=8, logprobs=True, top_logprobs=3)
    )
    events = await stream(smol, request)
    final = events[-1].final
    logprobs = final.outputs[0].logprobs
    assert len(logprobs) == final.usage.completion_tokens
    streamed = [lp for e in events if e.HasField("text_delta") for lp in e.text_delta.logprobs]
    assert [lp.token_id for lp in streamed] == [lp.token_id for lp in logprobs]
    for entry in logprobs:
        assert entry.logprob <= 0
        top = [alt.logprob for alt in entry.top_logprobs]
        assert len(top) == 3 and top == sorted(top, reverse=True)
        assert top[0] >= entry.logprob
    assert b"".join(lp.bytes for lp in logprobs).decode() == final.outputs[0].text


async def test_n_choices_carry_their_index(smol: Client) -> None:
    request = text_request("Name a fruit.", parameters=params(max_tokens=6, n=2, temperature=1.0))
    events = await stream(smol, request)
    deltas = [e.text_delta for e in events if e.HasField("text_delta")]
    assert {d.index for d in deltas} == {0, 1}
    final = events[-1].final
    assert [o.index for o in final.outputs] == [0, 1]
    assert [o.seed for o in final.outputs] == [7, 8]
    for output in final.outputs:
        assert "".join(d.text for d in deltas if d.index == output.index) == output.text


@pytest.mark.parametrize(
    ("constraint", "field"),
    [
        (common_pb2.OutputConstraint(grammar="root ::= undefined-rule"), "text.constraint.grammar"),
        # llama.cpp's schema converter ignores numeric bounds: refused, never unenforced.
        (json_schema({"type": "integer", "maximum": 9}), "text.constraint.json_schema"),
    ],
)
async def test_constraint_the_engine_cannot_compile_is_invalid(
    smol: Client, constraint: common_pb2.OutputConstraint, field: str
) -> None:
    code, fields = await refused(smol, text_request("hi", parameters=params(constraint=constraint)))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, {field})


def test_cli_generate_with_json_schema(smol_router: ServiceProcess, tmp_path: Path) -> None:
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(PERSON))
    done = run_cli(smol_router, "generate", "--json-schema", str(schema), "--json", "A person?")
    assert done.returncode == 0, done.stderr
    jsonschema.validate(json.loads(json.loads(done.stdout)["outputs"][0]["text"]), PERSON)


# The echo engine: protocol details, deterministic.


async def test_echo_tool_call_deltas(client: Client) -> None:
    request = text_request(CALL, parameters=params(tools=[WEATHER]))
    events = await stream(client, request)
    assert not any(e.text_delta.text for e in events if e.HasField("text_delta"))
    final = events[-1].final
    assert final.finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS
    (call,) = final.outputs[0].tool_calls
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
    (streamed,) = assembled(events).values()
    assert streamed == {"id": call.id, "name": call.name, "arguments": call.arguments}


async def test_echo_serves_only_constraints_its_echo_meets(client: Client) -> None:
    valid = text_request(
        '{"name": "Ada", "age": 36}', parameters=params(constraint=json_schema(PERSON))
    )
    assert json.loads((await client.generate(valid)).outputs[0].text)["name"] == "Ada"
    invalid = text_request("not json", parameters=params(constraint=json_schema(PERSON)))
    code, fields = await refused(client, invalid)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert fields == {"text.constraint.json_schema"}
    grammar = common_pb2.OutputConstraint(grammar='root ::= "x"')
    code, fields = await refused(client, text_request("x", parameters=params(constraint=grammar)))
    assert (code, fields) == (grpc.StatusCode.FAILED_PRECONDITION, {"text.constraint.grammar"})


async def test_echo_n_and_logprobs(client: Client) -> None:
    request = text_request("ab", parameters=params(n=2, logprobs=True, top_logprobs=2))
    events = await stream(client, request)
    final = events[-1].final
    assert [(o.index, o.text, o.seed) for o in final.outputs] == [(0, "ab", 7), (1, "ab", 8)]
    assert final.usage.completion_tokens == 4
    for output in final.outputs:
        assert [(lp.token, lp.logprob) for lp in output.logprobs] == [("a", 0), ("b", 0)]
        assert [len(lp.top_logprobs) for lp in output.logprobs] == [1, 1]
    indexes = [e.text_delta.index for e in events if e.HasField("text_delta")]
    assert sorted(set(indexes)) == [0, 1]


async def test_echo_accepts_a_tool_result_history(client: Client) -> None:
    request = text_request("what now?", parameters=params(tools=[WEATHER]))
    call = common_pb2.ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')
    request.inputs.extend([tool_calls_item([call]), tool_result("call_1", "sunny")])
    response = await client.generate(request)
    assert "sunny" in response.outputs[0].text


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"constraint": json_schema({"type": "no-such-type"})}, "text.constraint.json_schema"),
        ({"constraint": common_pb2.OutputConstraint(regex="(")}, "text.constraint.regex"),
        (
            {"constraint": common_pb2.OutputConstraint(choices=common_pb2.ChoiceList())},
            "text.constraint.choices",
        ),
        (
            {
                "tools": [WEATHER],
                "tool_choice": common_pb2.ToolChoice(mode=Mode.MODE_NAMED, name="nope"),
            },
            "text.tool_choice.name",
        ),
        ({"tool_choice": common_pb2.ToolChoice(mode=Mode.MODE_REQUIRED)}, "text.tool_choice.mode"),
        ({"tools": [tool("bad name!", "", {})]}, "text.tools[0].name"),
        ({"n": 0}, "text.n"),
        ({"n": 17}, "text.n"),
        ({"logprobs": True, "top_logprobs": 21}, "text.top_logprobs"),
        ({"top_logprobs": 2}, "text.top_logprobs"),
    ],
)
async def test_bad_input_names_the_field(
    client: Client, fields: dict[str, Any], field: str
) -> None:
    code, violations = await refused(client, text_request("x", parameters=params(**fields)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations


def test_rest_constrained_request(rest: Rest) -> None:  # noqa: F811 - the fixture
    body = {
        "task": "TASK_TEXT",
        "inputs": [{"text": "green"}],
        "text": {"constraint": {"choices": {"choices": ["red", "green"]}}, "n": 2},
    }
    response = rest.call("POST", "/v1/generate", body)
    assert response.status == 200
    assert [(o["index"], o["text"]) for o in response.body["outputs"]] == [
        (0, "green"),
        (1, "green"),
    ]
    schema = {"type": "object", "required": ["a"]}
    bad = rest.call(
        "POST", "/v1/generate", {**body, "text": {"constraint": {"json_schema": schema}}}
    )
    assert bad.status == 400
