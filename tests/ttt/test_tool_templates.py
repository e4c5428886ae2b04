"""Chat templates with tools of their own get tools, calls and results as data.

SmolLM2's template has no tools section, so a Hermes-style one (`hermes_tools.jinja`) is given to
it: to the GGUF through the llama.cpp `chat_template` option, and as the model's own template in
copies of the HF and ONNX folders. Each engine renders the tools, an assistant's calls and a tool
result through that template, and calls made through the router stay valid.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import jsonschema
import pytest

from genmesh.client import Client, text_request, tool, with_tool_results
from genmesh.runtime.errors import FieldViolation
from genmesh.runtime.settings import ConfigError
from genmesh.ttt import structured, tools
from genmesh.ttt.engine import ChatMessage, LocalEngine, ToolCall, ToolUse
from genmesh.ttt.llama_engine import LlamaCppEngine
from genmesh.ttt.models import default_gguf, derived_model
from genmesh.ttt.onnx_engine import OnnxGenAIEngine
from genmesh.ttt.registry import create_engine
from genmesh.ttt.settings import ModelSpec
from genmesh.ttt.transformers_engine import TransformersEngine
from genmesh.v1 import common_pb2
from tests.schemas import SCHEMAS
from tests.support import ServiceProcess, client_fixture, router_config, serve
from tests.ttt.conftest import binding

TEMPLATE = Path(__file__).with_name("hermes_tools.jinja")
WEATHER = tool("get_weather", "The current weather in a city.", SCHEMAS["get_weather"])
Mode = common_pb2.ToolChoice.Mode
CONTEXT = 2048
# The engines served through the router (transformers takes about a minute per call on a busy
# 2-core machine; its rendering is checked in this process, and the service code is shared).
SERVED = ("llama", "onnx")


def tool_use(choice: common_pb2.ToolChoice) -> ToolUse:
    """The tools as the service reads them from a request (schemas through protobuf's Struct)."""
    bad: list[FieldViolation] = []
    use = structured.tool_use(common_pb2.TextParameters(tools=[WEATHER], tool_choice=choice), bad)
    assert use is not None and not bad
    return use


def hermes_folder(source: Path, target: Path) -> Path:
    """A copy of a model folder (weights linked) whose own chat template is the Hermes one, in
    tokenizer_config.json."""
    target.mkdir()
    for file in source.iterdir():
        if file.name.startswith("model."):
            (target / file.name).symlink_to(file)
        elif file.name != "chat_template.jinja":
            shutil.copy(file, target)
    config = target / "tokenizer_config.json"
    config.write_text(
        json.dumps({**json.loads(config.read_text()), "chat_template": TEMPLATE.read_text()})
    )
    return target


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hermes")
    return {form: hermes_folder(derived_model(form), root / form) for form in ("hf", "onnx")}


@pytest.fixture(scope="module")
def hermes_ttt(folders: dict[str, Path]) -> Iterator[ServiceProcess]:
    pytest.importorskip("llama_cpp")
    options = {"context_size": CONTEXT, "chat_template": str(TEMPLATE)}
    models = [
        {"name": "llama", "engine": "llama.cpp", "options": options, "concurrency": 1},
        {"name": "onnx", "engine": "onnxruntime-genai", "path": str(folders["onnx"])},
    ]
    yield from serve("ttt", {"models": models})


@pytest.fixture(scope="module")
def hermes_router(hermes_ttt: ServiceProcess) -> Iterator[ServiceProcess]:
    bindings = [binding(name, hermes_ttt.address, name) for name in SERVED]
    yield from serve("router", router_config(bindings))


hermes = client_fixture("hermes_router")


@pytest.fixture(scope="module")
async def engines(folders: dict[str, Path]) -> AsyncIterator[dict[str, LocalEngine]]:
    """The served models' engines, loaded in this process too to see the prompts they build."""
    loaded: dict[str, LocalEngine] = {
        "llama": LlamaCppEngine(
            default_gguf(), context_size=CONTEXT, batching=False, chat_template=str(TEMPLATE)
        ),
        "hf": TransformersEngine(folders["hf"]),
        "onnx": OnnxGenAIEngine(folders["onnx"]),
    }
    for engine in loaded.values():
        await engine.load()
    yield loaded
    for engine in loaded.values():
        await engine.unload()


def smollm2_template() -> str:
    return (derived_model("hf") / "chat_template.jinja").read_text()


@pytest.mark.parametrize(
    ("template", "writes"),
    [
        (TEMPLATE.read_text(), True),
        # Reads the tools but asks for another call layout.
        ("{% for t in tools %}{{ t | tojson }}{% endfor %}[TOOL_CALLS]", False),
        # Asks for <tool_call> blocks in prose, without the definitions.
        ("Answer with <tool_call> blocks. {{ messages[0].content }}", False),
        ("{% set tools = [] %}{{ tools }}<tool_call>", False),
        ("{% if tools %}<tool_call>", False),
    ],
    ids=["hermes", "other-layout", "no-tools", "own-tools", "broken"],
)
def test_which_templates_write_tools_themselves(template: str, writes: bool) -> None:
    assert tools.writes_tool_calls(template) is writes


HISTORY = [
    ChatMessage("user", "What is the weather in Paris?"),
    ChatMessage("assistant", "", (ToolCall("call_1", "get_weather", '{"city": "Paris"}'),)),
    ChatMessage("tool", "18 C, sunny", tool_call_id="call_1"),
]


def test_template_inputs_are_openai_messages() -> None:
    use = tool_use(common_pb2.ToolChoice(mode=Mode.MODE_AUTO))
    chat, definitions = tools.template_inputs(HISTORY, use, TEMPLATE.read_text())
    assert chat[1:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "content": "18 C, sunny", "tool_call_id": "call_1", "name": "get_weather"},
    ]
    assert definitions == [{"type": "function", "function": tools.definition(use.tools[0])}]
    # SmolLM2's own template has no tools: it gets them as text, and so no definitions.
    assert not tools.writes_tool_calls(smollm2_template())
    plain = tools.conversation(HISTORY, use, smollm2_template())
    assert [m.role for m in plain] == ["system", "user", "assistant", "user"]
    assert tools.template_inputs(plain, use, smollm2_template())[1] is None


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("{% if tools %}<tool_call>", "chat_template: line 1: Unexpected end of template"),
        ("no/such/template.jinja", "chat_template: cannot read no/such/template.jinja"),
    ],
)
def test_a_bad_chat_template_option_stops_the_start(value: str, error: str) -> None:
    spec = ModelSpec(name="m", engine="llama.cpp", options={"chat_template": value})
    with pytest.raises(ConfigError, match=f"^ttt.models\\[m\\]: {error}"):
        create_engine(spec, secrets=None)  # type: ignore[arg-type]  # local engines need none


@pytest.mark.parametrize("name", ["llama", "hf", "onnx"])
async def test_the_template_renders_tools_calls_and_results(
    engines: dict[str, LocalEngine], name: str
) -> None:
    engine = engines[name]
    use = tool_use(common_pb2.ToolChoice(mode=Mode.MODE_REQUIRED))
    messages = tools.conversation(HISTORY, use, engine.chat_template)
    prompt = engine.detokenize(engine.prompt_tokens(messages, use))
    definition = json.dumps(tools.definition(use.tools[0]), ensure_ascii=False)
    assert f"<tools>\n{definition}\n</tools>" in prompt
    assert (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>' in prompt
    )
    assert "tool\n<tool_response>\n18 C, sunny\n</tool_response>" in prompt
    assert tools.instructions(use) not in prompt


@pytest.mark.parametrize("name", SERVED)
async def test_a_required_call_and_its_result_go_through_the_template(
    hermes: Client, engines: dict[str, LocalEngine], name: str
) -> None:
    required = common_pb2.TextParameters(
        seed=7,
        max_tokens=60,
        tools=[WEATHER],
        tool_choice=common_pb2.ToolChoice(mode=Mode.MODE_REQUIRED),
        parallel_tool_calls=False,
    )
    question = text_request("What is the weather in Paris?", binding=name, parameters=required)
    called = await hermes.generate(question)
    assert called.finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS
    (call,) = called.outputs[0].tool_calls
    jsonschema.validate(json.loads(call.arguments), SCHEMAS["get_weather"])

    follow_up = with_tool_results(question, [call], ["18 C, sunny"])
    follow_up.text.max_tokens = 4
    answered = await hermes.generate(follow_up)
    # The service built the prompt the template makes of the call and result as data.
    use = tool_use(common_pb2.ToolChoice(mode=Mode.MODE_AUTO))
    history = [
        ChatMessage("user", "What is the weather in Paris?"),
        ChatMessage("assistant", "", (ToolCall(call.id, call.name, call.arguments),)),
        ChatMessage("tool", "18 C, sunny", tool_call_id=call.id),
    ]
    engine = engines[name]
    assert answered.usage.prompt_tokens == len(engine.prompt_tokens(history, use))
    as_text = tools.plain_messages(history, use)
    assert answered.usage.prompt_tokens != len(engine.prompt_tokens(as_text, None))
