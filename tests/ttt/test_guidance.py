"""Structured output and tool calls on the onnxruntime-genai and transformers engines (SmolLM2 in
its ONNX and HF forms, through the router and the edge): llguidance's grammars hold whatever the
tiny model would have said, and what llguidance cannot compile is refused naming the field."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import grpc
import jsonschema
import pytest

from genmesh.client import Client, error_details, json_schema, text_request, tool
from genmesh.v1 import common_pb2, generation_pb2
from tests.edge.conftest import edge_process, sdk
from tests.edge.test_structured import TOOLS as OPENAI_TOOLS
from tests.edge.test_structured import assembled, finishes
from tests.schemas import PERSON, SCHEMAS
from tests.support import ServiceProcess, client_fixture, router_config, running, serve
from tests.ttt.conftest import binding

ENGINES = {"onnx": "onnxruntime-genai", "hf": "transformers"}
Mode = common_pb2.ToolChoice.Mode
TOOLS = [tool(name, "", schema) for name, schema in SCHEMAS.items()]
PHONE = r"[0-9]{3}-[0-9]{4}"
ANSWER = r"(?i)(yes|no)!"
# get_time leaves extra properties open, and the tiny model adds some: calls of 78 tokens were seen.
CALL_BUDGET = 256

pytestmark = pytest.mark.parametrize("engine", ENGINES)


@pytest.fixture(scope="module")
def guided_ttt() -> Iterator[ServiceProcess]:
    models = [{"name": name, "engine": engine} for name, engine in ENGINES.items()]
    yield from serve("ttt", {"models": models})


@pytest.fixture(scope="module")
def guided_router(guided_ttt: ServiceProcess) -> Iterator[ServiceProcess]:
    yield from serve(
        "router", router_config([binding(name, guided_ttt.address, name) for name in ENGINES])
    )


@pytest.fixture(scope="module")
def guided_edge(guided_router: ServiceProcess) -> Iterator[ServiceProcess]:
    yield from running(edge_process(guided_router))


guided = client_fixture("guided_router")


def request(engine: str, prompt: str, **fields: Any) -> common_pb2.GenerateRequest:
    parameters = common_pb2.TextParameters(seed=7, **fields)
    return text_request(prompt, binding=engine, parameters=parameters)


async def stream(client: Client, request: common_pb2.GenerateRequest) -> list[Any]:
    call = client.generation.GenerateStream(
        generation_pb2.GenerateStreamRequest(request=request), metadata=client.metadata
    )
    return [response.event async for response in call]


def streamed_calls(events: list[Any]) -> list[tuple[str, str, str]]:
    """(id, name, arguments) of each call put together from its deltas."""
    calls: dict[int, list[str]] = {}
    for event in events:
        if event.HasField("tool_call_delta"):
            delta = event.tool_call_delta
            if delta.call_index not in calls:
                assert delta.id and delta.name, "a call's first delta carries its id and name"
                calls[delta.call_index] = [delta.id, delta.name, ""]
            calls[delta.call_index][2] += delta.arguments
    return [(i, n, a) for i, n, a in calls.values()]


def choices(*items: str) -> common_pb2.OutputConstraint:
    return common_pb2.OutputConstraint(choices=common_pb2.ChoiceList(choices=items))


def regex(pattern: str) -> common_pb2.OutputConstraint:
    return common_pb2.OutputConstraint(regex=pattern)


def gbnf(text: str) -> common_pb2.OutputConstraint:
    return common_pb2.OutputConstraint(grammar=text)


async def test_json_schema_output_validates(guided: Client, engine: str) -> None:
    constraint = json_schema(PERSON)
    response = await guided.generate(
        request(engine, "Describe a person.", max_tokens=60, constraint=constraint)
    )
    assert response.finish_reason == common_pb2.FINISH_REASON_STOP
    jsonschema.validate(json.loads(response.outputs[0].text), PERSON)


@pytest.mark.parametrize(
    ("constraint", "valid"),
    [
        (regex(PHONE), lambda t: re.fullmatch(PHONE, t)),
        # Inline flags, which the llama.cpp engine refuses.
        (regex(ANSWER), lambda t: re.fullmatch(ANSWER, t)),
        (choices("red", "C:\\new", 'say "hi"'), lambda t: t in ("red", "C:\\new", 'say "hi"')),
        (gbnf('root ::= "yes" | "no"'), {"yes", "no"}.__contains__),
    ],
    ids=["regex", "flags", "choices", "gbnf"],
)
async def test_constraint_holds_when_streamed(
    guided: Client, engine: str, constraint: common_pb2.OutputConstraint, valid: Any
) -> None:
    events = await stream(guided, request(engine, "Answer.", max_tokens=16, constraint=constraint))
    text = "".join(e.text_delta.text for e in events if e.HasField("text_delta"))
    final = events[-1].final
    assert valid(text) and final.outputs[0].text == text
    assert final.finish_reason == common_pb2.FINISH_REASON_STOP


@pytest.mark.parametrize("choice", [common_pb2.ToolChoice(mode=Mode.MODE_REQUIRED), "get_time"])
async def test_required_and_named_calls_are_valid_and_stream_as_they_end(
    guided: Client, engine: str, choice: common_pb2.ToolChoice | str
) -> None:
    if isinstance(choice, str):
        choice = common_pb2.ToolChoice(mode=Mode.MODE_NAMED, name=choice)
    events = await stream(
        guided,
        request(
            engine,
            "What is the weather in Paris?",
            max_tokens=CALL_BUDGET,
            tools=TOOLS,
            tool_choice=choice,
            parallel_tool_calls=False,
        ),
    )
    final = events[-1].final
    assert final.finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS
    (call,) = final.outputs[0].tool_calls
    assert final.outputs[0].text == ""
    assert call.name == (choice.name or call.name)
    jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
    assert streamed_calls(events) == [(call.id, call.name, call.arguments)]


def test_openai_sdk_streams_a_valid_required_call(guided_edge: ServiceProcess, engine: str) -> None:
    """Through the edge, the call's deltas in OpenAI's shape put together a valid call."""
    with sdk(guided_edge, timeout=300.0) as client:
        chunks = list(
            client.chat.completions.create(
                model=engine,
                messages=[{"role": "user", "content": "What time is it in Tokyo?"}],
                tools=OPENAI_TOOLS,
                tool_choice="required",
                parallel_tool_calls=False,
                max_tokens=CALL_BUDGET,
                seed=7,
                stream=True,
            )
        )
    (call,) = assembled(chunks).values()
    jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])
    assert finishes(chunks) == {0: ["tool_calls"]}


async def test_auto_tool_choice_is_text_or_valid_calls(guided: Client, engine: str) -> None:
    response = await guided.generate(
        request(engine, "Hello! How are you?", max_tokens=24, tools=TOOLS)
    )
    output = response.outputs[0]
    assert output.text or output.tool_calls
    assert "<tool_call>" not in output.text
    for call in output.tool_calls:
        jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])


def bad_tool_schema() -> common_pb2.Tool:
    schema = {"type": "object", "properties": {"x": {"type": "string", "pattern": "(a)\\1"}}}
    return tool("f", "", schema)


INVALID, LIMIT = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("fields", "code", "field"),
    [
        # Valid, but beyond llguidance (as on llama.cpp).
        ({"constraint": regex("(a)\\1")}, LIMIT, "text.constraint.regex"),
        (
            {"constraint": json_schema({"type": "string", "pattern": "a(?=b)"})},
            LIMIT,
            "text.constraint.json_schema",
        ),
        ({"tools": [TOOLS[0], bad_tool_schema()]}, LIMIT, "text.tools[1].parameters"),
        # Malformed, or admitting no text at all.
        ({"constraint": gbnf("root ::= undefined-rule")}, INVALID, "text.constraint.grammar"),
        ({"constraint": gbnf("root ::= []")}, INVALID, "text.constraint.grammar"),
        ({"constraint": regex("[^\\s\\S]")}, INVALID, "text.constraint.regex"),
    ],
    ids=["backreference", "lookahead", "tool", "undefined", "empty-class", "nothing"],
)
async def test_what_llguidance_cannot_compile_is_refused_naming_the_field(
    guided: Client, engine: str, fields: dict[str, Any], code: grpc.StatusCode, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guided.generate(request(engine, "hi", max_tokens=4, **fields))
    assert caught.value.code() == code
    assert set(error_details(caught.value).violations) == {field}
