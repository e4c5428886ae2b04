"""Personalities in the LOLLMS folder format: discovery, the merge order, anti-prompts, and
scripted workflows run in a real sandbox service.

The echo engine answers with the last user message, and counts every message's characters as
prompt tokens, so `usage.prompt_tokens` shows exactly what system prompt reached the engine.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import json_format

from genmesh.client import Client, error_details, text_request
from genmesh.router.settings import ZOO
from genmesh.v1 import common_pb2, generation_pb2
from tests.support import ServiceProcess, client_fixture, echo_binding, router_config, serve

POET = "You are a poet.\nAnswer in verse."


def personality(root: Path, folder: str, config: dict[str, Any], **files: str) -> None:
    path = root / folder
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    for name, text in files.items():
        (path / name).write_text(textwrap.dedent(text))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("personalities")
    personality(
        root,
        "poet",
        {
            "name": "Poet",
            "author": "tests",
            "version": 2.1,
            "category": "art",
            "personality_description": "Writes verse.",
            "personality_conditioning": POET,
            "model_n_predicts": 5,
            "model_temperature": 0.3,
            "anti_prompts": ["STOP"],
            "tags": ["verse"],
            "disclaimer": None,
            "welcome_message": "LOLLMS fields genmesh does not use are accepted.",
        },
    )
    personality(root, "fun/jester", {"name": "Jester", "personality_conditioning": "Joke."})
    personality(root, "shy", {"name": "Shy", "personality_conditioning": "..."})
    personality(root, "broken", {"name": "Broken", "model_top_p": 7})
    personality(
        root,
        "escaper",
        {"name": "Escaper", "script_path": "workflow.py"},
        **{"workflow.py": "import os\nos.getcwd()\n"},
    )
    personality(
        root,
        "chain",
        {
            "name": "Chain",
            "personality_conditioning": "Be brief.",
            "model_n_predicts": 40,
            "script_path": "workflow.py",
        },
        **{
            "workflow.py": """
            first = generate_text(prompt, system=conditioning)
            second = generate_text(first + "!", max_tokens=parameters.max_tokens)
            print(f"chained {len(inputs)} inputs")
            [second, {"personality": personality, "stats": word_count(second)}]
            """
        },
    )
    return root


@pytest.fixture(scope="module")
def mesh(ttt: ServiceProcess, sandbox: ServiceProcess, folder: Path) -> Iterator[ServiceProcess]:
    binding = {**echo_binding(ttt.address), "parameters": {"maxTokens": 100, "stop": ["#"]}}
    config = router_config(
        [binding],
        sandbox_address=sandbox.address,
        personality_folders=[str(folder), str(ZOO / "personalities")],
        personalities={"shy": {"enabled": False}, "ghost": {"enabled": False}},
    )
    yield from serve("router", config)


client = client_fixture("mesh")


async def test_listed_with_their_lollms_fields(client: Client) -> None:
    listed = {p.name: p for p in await client.list_personalities()}
    assert sorted(listed) == [
        "assistant",
        "chain",
        "chat_partner",
        "illustrator",
        "jester",
        "poet",
    ]
    poet = listed["poet"]
    assert (poet.author, poet.version, poet.description) == ("tests", "2.1", "Writes verse.")
    assert (poet.category, list(poet.tags), poet.scripted) == ("art", ["verse"], False)
    assert listed["jester"].category == "fun"
    assert listed["chain"].scripted and listed["illustrator"].scripted
    assert listed["illustrator"].disclaimer


def test_bad_personalities_are_reported_and_skipped(mesh: ServiceProcess) -> None:
    skipped = {Path(e["personality"]).name: e["error"] for e in mesh.events("personality skipped")}
    assert set(skipped) == {"broken", "escaper", "ghost"}
    assert "config.yaml: model_top_p" in skipped["broken"]
    assert "not a sandbox program" in skipped["escaper"] and "line 1" in skipped["escaper"]
    assert "not found" in skipped["ghost"]


@pytest.mark.parametrize("name", ["shy", "broken", "nobody"])
async def test_disabled_broken_or_unknown_is_not_found(client: Client, name: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await client.generate(text_request("hi", personality=name))
    details = error_details(missing.value)
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert details.metadata == {"personality": name}


async def test_conditioning_reaches_the_engine_as_the_system_prompt(client: Client) -> None:
    plain = await client.generate(text_request("verse please"))
    assert plain.usage.prompt_tokens == len("verse please")
    conditioned = await client.generate(text_request("verse", personality="poet"))
    assert conditioned.usage.prompt_tokens == len(POET) + len("verse")
    # A request's own system context comes after the personality's conditioning.
    both = await client.generate(text_request("verse", personality="poet", system="Rhyme."))
    assert both.usage.prompt_tokens == len(f"{POET}\n\nRhyme.") + len("verse")


async def test_a_raw_prompt_takes_no_personality(client: Client) -> None:
    raw = common_pb2.TextParameters(raw_prompt=True)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.generate(text_request("verse", personality="poet", parameters=raw))
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "personality" in details.violations


async def test_parameters_merge_binding_then_personality_then_request(client: Client) -> None:
    prompt = "abcdefghijklmnopqrstuvwxyz"
    binding_only = await client.generate(text_request(prompt))
    assert binding_only.outputs[0].text == prompt
    personality_wins = await client.generate(text_request(prompt, personality="poet"))
    assert personality_wins.outputs[0].text == prompt[:5]
    assert personality_wins.finish_reason == common_pb2.FINISH_REASON_LENGTH
    request_wins = await client.generate(
        text_request(prompt, personality="poet", parameters=common_pb2.TextParameters(max_tokens=8))
    )
    assert request_wins.outputs[0].text == prompt[:8]
    # A binding default applies when neither sets it: max_tokens 100 from the binding.
    long = await client.generate(text_request("x" * 150))
    assert long.outputs[0].text == "x" * 100


async def test_anti_prompts_stop_generation(client: Client) -> None:
    reply = await client.generate(
        text_request("Sure thing. User: and now I speak for you", personality="chat_partner")
    )
    assert reply.outputs[0].text == "Sure thing. "
    assert reply.finish_reason == common_pb2.FINISH_REASON_STOP_SEQUENCE
    assert reply.stop_sequence == "User:"
    # Stops accumulate: the binding's "#", the personality's anti-prompts, the request's own.
    for prompt, stop, expected in [
        ("ab#cd User: x", "", "ab"),
        ("abc User: x", "", "abc "),
        ("ab-cd User: x", "-", "ab"),
    ]:
        params = common_pb2.TextParameters(stop=[stop] if stop else [])
        answer = await client.generate(
            text_request(prompt, personality="chat_partner", parameters=params)
        )
        assert answer.outputs[0].text == expected, prompt


async def test_scripted_personality_runs_its_workflow_in_the_sandbox(client: Client) -> None:
    request = text_request("tell me", personality="chain", request_id="wf-1")
    response = await client.generate(request)
    assert response.request_id == "wf-1"
    text, data = response.outputs
    assert text.kind == common_pb2.CONTENT_KIND_TEXT and text.text == "tell me!"
    assert data.kind == common_pb2.CONTENT_KIND_JSON
    assert json_format.MessageToDict(data.json) == {
        "personality": "chain",
        "stats": {"words": 2, "lines": 1, "chars": 8},
    }
    events = [e async for e in client.generate_stream(request)]
    assert events[0].info.message == "chained 1 inputs"
    assert events[-1].final.outputs[0].text == "tell me!"


async def test_a_failing_workflow_names_the_line(client: Client) -> None:
    """The shipped illustrator chains text into an image prompt; this mesh has no image
    binding, so its generate_image call fails and the client learns where and why."""
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await client.generate(text_request("a red circle", personality="illustrator"))
    details = error_details(failed.value)
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.reason == "WORKFLOW_FAILED"
    assert details.metadata["personality"] == "illustrator"
    assert "TASK_IMAGE" in details.message
    assert "Traceback" not in details.message


async def test_a_personality_keeps_its_conditioning_across_turns(client: Client) -> None:
    def turn(text: str) -> generation_pb2.ConverseRequest:
        return generation_pb2.ConverseRequest(
            turn=generation_pb2.ConverseTurn(inputs=[common_pb2.InputItem(text=text)])
        )

    config = common_pb2.GenerateRequest(personality="poet")
    call = client.generation.Converse(
        iter([generation_pb2.ConverseRequest(config=config), turn("one"), turn("two")]),
        metadata=client.metadata,
    )
    finals = [r.event.final async for r in call if r.event.HasField("final")]
    assert [f.outputs[0].text for f in finals] == ["one", "two"]
    assert finals[1].usage.prompt_tokens == len(POET) + len("one") + len("one") + len("two")
