"""Structured output, tool calls, logprobs and n choices through the router: real behaviour on
SmolLM2 (llama.cpp), protocol details on the echo engine, bad input on both, and one constrained
request over REST through the gateway."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genmesh.client import (
    Client,
    error_details,
    json_schema,
    text_request,
    tool,
    tool_calls_item,
    tool_result,
    with_tool_results,
)
from genmesh.v1 import common_pb2, generation_pb2
from tests.gateway.conftest import Rest, rest  # noqa: F401 - the gateway fixture
from tests.schemas import PERSON, SCHEMAS
from tests.support import ServiceProcess, client_fixture, run_cli

smol = client_fixture("smol_router")
Mode = common_pb2.ToolChoice.Mode
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
    follow_up = with_tool_results(question, [call], ["09:30 JST"])
    follow_up.text.max_tokens = 40
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
    logprobs = [lp for e in events if e.HasField("text_delta") for lp in e.text_delta.logprobs]
    assert len(logprobs) == final.usage.completion_tokens
    assert not final.outputs[0].logprobs, "the streamed final leaves them to the deltas"
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


async def test_constraint_the_engine_cannot_compile_is_invalid(smol: Client) -> None:
    constraint = common_pb2.OutputConstraint(grammar="root ::= undefined-rule")
    code, fields = await refused(smol, text_request("hi", parameters=params(constraint=constraint)))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, {"text.constraint.grammar"})


async def test_constraint_beyond_the_engine_is_failed_precondition(smol: Client) -> None:
    # llama.cpp's schema converter ignores numeric bounds: refused, never unenforced.
    constraint = json_schema({"type": "integer", "maximum": 9})
    code, fields = await refused(smol, text_request("hi", parameters=params(constraint=constraint)))
    assert (code, fields) == (grpc.StatusCode.FAILED_PRECONDITION, {"text.constraint.json_schema"})


async def answers(client: Client) -> None:
    """ttt is still up: a plain request gets its answer."""
    response = await client.generate(text_request("Hi", parameters=params(max_tokens=2)))
    assert response.usage.completion_tokens >= 1


def regex(pattern: str) -> common_pb2.OutputConstraint:
    return common_pb2.OutputConstraint(regex=pattern)


def gbnf(text: str) -> common_pb2.OutputConstraint:
    return common_pb2.OutputConstraint(grammar=text)


INVALID, LIMIT = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION
SCHEMA, REGEX, GRAMMAR = (f"text.constraint.{k}" for k in ("json_schema", "regex", "grammar"))


@pytest.mark.parametrize(
    ("constraint", "code", "field"),
    [
        # Grammars no token can satisfy: llama.cpp aborted the process on them.
        (gbnf('root ::= "\\x00"'), INVALID, GRAMMAR),
        (gbnf('root ::= "\x00"'), INVALID, GRAMMAR),
        (gbnf("root ::= []"), INVALID, GRAMMAR),
        (gbnf("root ::= [^\\x00-\\U0010FFFF]"), INVALID, GRAMMAR),
        (regex("\x00"), INVALID, REGEX),
        (regex("\\x00"), INVALID, REGEX),
        (regex("[^\\s\\S]"), INVALID, REGEX),
        (json_schema({"type": "string", "pattern": "\\x00"}), INVALID, SCHEMA),
        (json_schema({"enum": ["a\x00"]}), INVALID, SCHEMA),
        # Deep nesting: llama.cpp's recursive parser overflowed its stack.
        (gbnf("root ::= " + "(" * 50_000 + '"a"' + ")" * 50_000), LIMIT, GRAMMAR),
        (json_schema({"type": "string", "maxLength": 20_000}), LIMIT, SCHEMA),
        (json_schema({"type": "array", "maxItems": 20_000}), LIMIT, SCHEMA),
        (regex("a{0,20000}"), LIMIT, REGEX),
        (regex("(?:a)\\1"), INVALID, REGEX),
        (regex("(a)\\1"), LIMIT, REGEX),
    ],
)
async def test_constraints_that_took_ttt_down_are_refused(
    smol: Client, constraint: common_pb2.OutputConstraint, code: grpc.StatusCode, field: str
) -> None:
    request = text_request("hi", parameters=params(max_tokens=4, constraint=constraint))
    assert await refused(smol, request) == (code, {field})
    await answers(smol)


async def test_repetition_at_the_limit_runs(smol: Client) -> None:
    schema = {"type": "string", "maxLength": 500}
    request = text_request(
        "A word?", parameters=params(max_tokens=6, constraint=json_schema(schema))
    )
    response = await smol.generate(request)
    assert response.outputs[0].text.startswith('"')
    await answers(smol)


async def test_empty_schema_is_any_json_value(smol: Client) -> None:
    constraint = common_pb2.OutputConstraint()
    constraint.json_schema.SetInParent()  # {}: OpenAI's json_object
    request = text_request("A JSON list of two numbers.", parameters=params(max_tokens=40))
    request.text.constraint.CopyFrom(constraint)
    response = await smol.generate(request)
    if response.outputs[0].finish_reason == common_pb2.FINISH_REASON_STOP:
        json.loads(response.outputs[0].text)


async def test_empty_regex_is_the_empty_output(smol: Client) -> None:
    response = await smol.generate(text_request("hi", parameters=params(constraint=regex(""))))
    assert response.outputs[0].text == ""


async def test_regex_dialect_on_smol(smol: Client) -> None:
    pattern = r"(?:\d{2}|\w)\s[A-Z]\$"
    response = await smol.generate(
        text_request("Write 12 A$", parameters=params(max_tokens=12, constraint=regex(pattern)))
    )
    assert re.fullmatch(pattern, response.outputs[0].text)


async def test_choices_with_backslashes_come_out_exactly(smol: Client) -> None:
    choices = common_pb2.ChoiceList(choices=["C:\\new", "a\\b"])
    constraint = common_pb2.OutputConstraint(choices=choices)
    response = await smol.generate(text_request("Pick", parameters=params(constraint=constraint)))
    assert response.outputs[0].text in {"C:\\new", "a\\b"}
    enum = json_schema({"enum": ["a\\b"]})
    response = await smol.generate(text_request("Pick", parameters=params(constraint=enum)))
    assert json.loads(response.outputs[0].text) == "a\\b"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"seed": 2**63 - 1, "n": 2}, "text.seed"),
        ({"tools": [tool("f", "", {"type": "string"})]}, "text.tools[0].parameters"),
        (
            {"n": 16, "max_tokens": 2000, "logprobs": True, "top_logprobs": 20},
            "text.logprobs",
        ),
    ],
)
async def test_bad_input_on_smol_is_invalid(
    smol: Client, fields: dict[str, Any], field: str
) -> None:
    request = text_request("x", parameters=common_pb2.TextParameters(**fields))
    code, violations = await refused(smol, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and field in violations


async def test_tool_fields_only_on_their_roles(client: Client) -> None:
    call = common_pb2.ToolCall(id="call_1", name="get_weather", arguments="{}")
    misplaced = text_request("x", parameters=params(tools=[WEATHER]))
    misplaced.inputs[0].tool_calls.append(call)
    code, violations = await refused(client, misplaced)
    assert (code, violations) == (grpc.StatusCode.INVALID_ARGUMENT, {"inputs[0].tool_calls"})
    answer = text_request("x", parameters=params(tools=[WEATHER]))
    answer.inputs[0].tool_call_id = "call_1"
    code, violations = await refused(client, answer)
    assert (code, violations) == (grpc.StatusCode.INVALID_ARGUMENT, {"inputs[0].tool_call_id"})


async def test_streamed_final_leaves_logprobs_to_the_deltas(client: Client) -> None:
    request = text_request("ab", parameters=params(logprobs=True, top_logprobs=1))
    events = await stream(client, request)
    assert sum(len(e.text_delta.logprobs) for e in events if e.HasField("text_delta")) == 2
    assert not events[-1].final.outputs[0].logprobs
    assert len((await client.generate(request)).outputs[0].logprobs) == 2


async def test_two_tools_with_their_own_definitions(smol: Client) -> None:
    def item(kind: str) -> dict[str, Any]:
        return {
            "type": "object",
            "$defs": {"Item": {"type": kind, **({"maxLength": 10} if kind == "string" else {})}},
            "properties": {"x": {"$ref": "#/$defs/Item"}},
            "required": ["x"],
        }

    schemas = {"name_it": item("string"), "count_it": item("integer")}
    request = text_request(
        "Count the apples.",
        parameters=params(
            max_tokens=60,
            tools=[tool(name, "", schema) for name, schema in schemas.items()],
            tool_choice=common_pb2.ToolChoice(mode=Mode.MODE_REQUIRED),
        ),
    )
    response = await smol.generate(request)
    for call in response.outputs[0].tool_calls:
        jsonschema.validate(json.loads(call.arguments), schemas[call.name])


SMALL_SCHEMAS = st.recursive(
    st.sampled_from(
        [
            {"type": "integer"},
            {"type": "boolean"},
            {"type": "string", "maxLength": 8},
            {"enum": ["a", "b\\c"]},
            {"type": "string", "pattern": "^[a-c]{1,3}$"},
            {"type": "number", "minimum": 0},
        ]
    ),
    lambda inner: st.one_of(
        st.builds(
            lambda props: {
                "type": "object",
                "properties": props,
                "required": sorted(props),
                "additionalProperties": False,
            },
            st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, min_size=1, max_size=2),
        ),
        st.builds(lambda i: {"type": "array", "items": i, "maxItems": 2}, inner),
        st.builds(lambda xs: {"anyOf": xs}, st.lists(inner, min_size=2, max_size=2)),
    ),
    max_leaves=4,
)


@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(schema=SMALL_SCHEMAS)
async def test_generated_schemas_validate_or_are_refused(
    smol: Client, schema: dict[str, Any]
) -> None:
    request = text_request(
        "Answer in JSON.", parameters=params(max_tokens=48, constraint=json_schema(schema))
    )
    try:
        response = await smol.generate(request)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() in (INVALID, LIMIT), exc
        assert error_details(exc).violations
        return
    output = response.outputs[0]
    if output.finish_reason == common_pb2.FINISH_REASON_STOP:
        jsonschema.validate(json.loads(output.text), schema)
    else:
        assert output.finish_reason in (
            common_pb2.FINISH_REASON_LENGTH,
            common_pb2.FINISH_REASON_ERROR,
        )


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


async def test_a_regex_that_backtracks_for_days_is_checked_in_bounded_time(
    client: Client,
) -> None:
    """Python's `re` took days to find that forty a's do not match `(a|a)*b`, holding the GIL:
    the ttt service answered nothing (health checks included) meanwhile."""
    backtracking = common_pb2.OutputConstraint(regex="(a|a)*b")
    request = text_request("a" * 40, parameters=params(max_tokens=64, constraint=backtracking))
    code, fields = await refused(client, request)
    assert (code, fields) == (grpc.StatusCode.FAILED_PRECONDITION, {"text.constraint.regex"})
    matching = text_request(
        "a" * 40 + "b", parameters=params(max_tokens=64, constraint=backtracking)
    )
    assert (await client.generate(matching)).outputs[0].text == "a" * 40 + "b"


async def test_echo_n_and_logprobs(client: Client) -> None:
    request = text_request("ab", parameters=params(n=2, logprobs=True, top_logprobs=2))
    events = await stream(client, request)
    final = events[-1].final
    assert [(o.index, o.text, o.seed) for o in final.outputs] == [(0, "ab", 7), (1, "ab", 8)]
    assert final.usage.completion_tokens == 4
    for output in (await client.generate(request)).outputs:
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
        # Each of these ended INTERNAL.
        ({"constraint": json_schema({"$schema": 5})}, "text.constraint.json_schema"),
        ({"tools": [tool("f", "", {"$schema": "http://[::1"})]}, "text.tools[0].parameters"),
        # JSON has no NaN or infinity; ttt failed to read these back (502 at the OpenAI edge).
        ({"constraint": json_schema({"maximum": math.nan})}, "text.constraint.json_schema"),
        (
            {"tools": [tool("f", "", {"type": "object", "maximum": -math.inf})]},
            "text.tools[0].parameters",
        ),
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


def test_request_constraint_and_tools_replace_the_defaults() -> None:
    from genmesh.router.dispatch import _overlay

    merged = params(constraint=json_schema({"type": "object", "required": ["a"]}), tools=[TIME])
    _overlay(merged, params(constraint=json_schema({"type": "string"}), tools=[WEATHER]))
    assert json_format.MessageToDict(merged.constraint.json_schema) == {"type": "string"}
    assert [t.name for t in merged.tools] == ["get_weather"]


def test_a_request_can_undo_defaults_and_replaces_a_default_bias() -> None:
    from genmesh.router.dispatch import _overlay

    merged = common_pb2.TextParameters(
        presence_penalty=1.5, logit_bias={5: -100}, min_tokens=20, ignore_eos=True
    )
    later = common_pb2.TextParameters(
        presence_penalty=0, logit_bias={7: 3}, min_tokens=0, ignore_eos=False
    )
    _overlay(merged, later)
    assert merged.HasField("presence_penalty") and merged.presence_penalty == 0
    assert dict(merged.logit_bias) == {7: 3}
    assert (merged.min_tokens, merged.ignore_eos) == (0, False)
