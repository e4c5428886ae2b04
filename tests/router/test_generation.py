"""Generation through the router with the echo engine: every RPC shape, errors, lifecycle."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest

from genmesh.client import Client, ErrorDetails, error_details, media_input, text_request
from genmesh.router import validation
from genmesh.runtime.errors import ServiceError
from genmesh.v1 import common_pb2, generation_pb2, tokenizer_pb2
from tests.support import API_KEY, ServiceProcess, echo_binding, router_config, run_genmesh


def slow(prompt: str, delay_ms: int, repeat: int = 1) -> common_pb2.GenerateRequest:
    request = text_request(prompt, parameters=common_pb2.TextParameters(max_tokens=100_000))
    request.extra.update({"delay_ms": delay_ms, "repeat": repeat})
    return request


async def test_unary_generate_echoes_and_reports(client: Client) -> None:
    request = text_request("hello mesh", request_id="req-unary-1")
    call = client.generation.Generate(request, metadata=client.metadata)
    response = await call
    assert response.request_id == "req-unary-1"
    assert response.binding == "echo"
    assert response.model == "echo"
    assert response.outputs[0].text == "hello mesh"
    assert response.finish_reason == common_pb2.FINISH_REASON_STOP
    assert response.usage.completion_tokens == len("hello mesh")
    assert response.usage.total_tokens == response.usage.prompt_tokens + len("hello mesh")
    assert response.timings.total.ToNanoseconds() >= response.timings.first_token.ToNanoseconds()
    trailing = dict(await call.trailing_metadata())
    assert trailing["x-request-id"] == "req-unary-1"
    assert float(trailing["x-timing-total-ms"]) > 0


async def test_request_id_is_generated_when_missing(client: Client) -> None:
    response = await client.generate(text_request("id please"))
    assert len(response.request_id) == 32


async def test_max_tokens_and_stop_sequences(client: Client) -> None:
    cut = await client.generate(
        text_request("abcdefgh", parameters=common_pb2.TextParameters(max_tokens=3))
    )
    assert cut.outputs[0].text == "abc"
    assert cut.finish_reason == common_pb2.FINISH_REASON_LENGTH
    stopped = await client.generate(
        text_request("one, two. three", parameters=common_pb2.TextParameters(stop=[". "]))
    )
    assert stopped.outputs[0].text == "one, two"
    assert stopped.finish_reason == common_pb2.FINISH_REASON_STOP_SEQUENCE
    assert stopped.stop_sequence == ". "


async def test_think_blocks_become_thoughts(client: Client) -> None:
    response = await client.generate(text_request("<think>plan it</think>The answer."))
    assert response.outputs[0].thoughts == "plan it"
    assert response.outputs[0].text == "The answer."


async def test_stream_relays_every_delta_then_final(client: Client) -> None:
    events = [e async for e in client.generate_stream(text_request("streaming!"))]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "final"
    assert set(kinds[:-1]) == {"text_delta"}
    assert "".join(e.text_delta.text for e in events[:-1]) == "streaming!"
    assert events[-1].final.outputs[0].text == "streaming!"


async def test_stream_echoes_request_id_on_every_event(client: Client) -> None:
    call = client.generation.GenerateStream(
        generation_pb2.GenerateStreamRequest(request=text_request("ids", request_id="s-1")),
        metadata=client.metadata,
    )
    ids = {response.request_id async for response in call}
    assert ids == {"s-1"}
    assert dict(await call.trailing_metadata())["x-request-id"] == "s-1"


async def converse(
    client: Client, messages: list[generation_pb2.ConverseRequest], **call: Any
) -> list[generation_pb2.ConverseResponse]:
    stub = client.generation
    return [r async for r in stub.Converse(iter(messages), metadata=client.metadata, **call)]


def turn(text: str, turn_id: str) -> generation_pb2.ConverseRequest:
    return generation_pb2.ConverseRequest(
        turn=generation_pb2.ConverseTurn(turn_id=turn_id, inputs=[common_pb2.InputItem(text=text)])
    )


async def test_converse_keeps_history_across_turns(client: Client) -> None:
    config = common_pb2.GenerateRequest(
        request_id="conv-1",
        inputs=[common_pb2.InputItem(role=common_pb2.INPUT_ROLE_SYSTEM_CONTEXT, text="be brief")],
    )
    responses = await converse(
        client,
        [generation_pb2.ConverseRequest(config=config), turn("first", "t1"), turn("second", "t2")],
    )
    finals = {r.turn_id: r.event.final for r in responses if r.event.HasField("final")}
    assert finals["t1"].outputs[0].text == "first"
    assert finals["t2"].outputs[0].text == "second"
    # The second turn's prompt holds the system text, the first exchange and the new turn.
    expected = len("be brief") + len("first") * 2 + len("second")
    assert finals["t2"].usage.prompt_tokens == expected
    assert {r.request_id for r in responses} == {"conv-1"}


async def test_converse_cancel_stops_the_turn_and_keeps_the_stream(client: Client) -> None:
    stub = client.generation
    call = stub.Converse(metadata=client.metadata)
    config = common_pb2.GenerateRequest()
    config.extra.update({"delay_ms": 50})
    await call.write(generation_pb2.ConverseRequest(config=config))
    await call.write(turn("x" * 100, "slow"))
    first = await call.read()
    assert isinstance(first, generation_pb2.ConverseResponse)
    assert first.event.HasField("text_delta")
    await call.write(
        generation_pb2.ConverseRequest(
            control=common_pb2.Control(action=common_pb2.Control.ACTION_CANCEL)
        )
    )
    await call.write(turn("next", "after"))
    await call.done_writing()
    rest: list[generation_pb2.ConverseResponse] = []
    while isinstance(response := await call.read(), generation_pb2.ConverseResponse):
        rest.append(response)
    finals = {r.turn_id: r.event.final for r in rest if r.event.HasField("final")}
    assert finals["after"].outputs[0].text == "next"
    assert finals["slow"].finish_reason == common_pb2.FINISH_REASON_CANCELLED
    assert len(finals["slow"].outputs[0].text) < 100


async def test_converse_must_start_with_config(client: Client) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await converse(client, [turn("no config", "t")])
    details = error_details(failure.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "config" in details.violations


async def test_client_cancel_reaches_the_backend(client: Client, ttt: ServiceProcess) -> None:
    request = slow("cancel me please", delay_ms=50, repeat=50)
    request.request_id = "cancel-1"
    call = client.generation.GenerateStream(
        generation_pb2.GenerateStreamRequest(request=request), metadata=client.metadata
    )
    seen = 0
    async for _ in call:
        seen += 1
        if seen == 3:
            break
    call.cancel()
    ended = ttt.wait_for_event("generation ended", request_id="cancel-1")
    assert ended["outcome"] == "cancelled by client or deadline"
    assert ended["completion_tokens"] < len("cancel me please") * 50


async def test_deadline_gives_deadline_exceeded_and_stops_the_backend(
    client: Client, ttt: ServiceProcess
) -> None:
    # No character is due before the deadline, so the answer cannot be a partial final.
    request = slow("too slow", delay_ms=10_000)
    request.request_id = "deadline-1"
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await client.generate(request, timeout=2.0)
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    ended = ttt.wait_for_event("generation ended", request_id="deadline-1")
    assert ended["outcome"] == "cancelled by client or deadline"


RAW = common_pb2.TextParameters(raw_prompt=True)
IDS = common_pb2.InputItem(tokens=common_pb2.TokenSequence(ids=[104, 105]))
BAD_REQUESTS = {
    "no inputs": (common_pb2.GenerateRequest(), grpc.StatusCode.INVALID_ARGUMENT, "inputs"),
    "unknown binding": (
        text_request("x", binding="nope"),
        grpc.StatusCode.NOT_FOUND,
        "binding",
    ),
    "unknown personality": (
        text_request("x", personality="nobody"),
        grpc.StatusCode.NOT_FOUND,
        "personality",
    ),
    "wrong mime type": (
        common_pb2.GenerateRequest(
            inputs=[
                common_pb2.InputItem(text="x"),
                media_input("image", b"\x89PNG\r\n\x1a\n", "text/plain"),
            ]
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs[1].mime_type",
    ),
    "garbage bytes": (
        common_pb2.GenerateRequest(
            inputs=[common_pb2.InputItem(text="x"), media_input("image", b"garbage!", "image/png")]
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs[1].data",
    ),
    "too large": (
        text_request("x" * (9 * 1024 * 1024)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs",
    ),
    "bad parameters": (
        text_request("x", parameters=common_pb2.TextParameters(temperature=-1, top_p=2)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "text.temperature",
    ),
    "repeat penalty not a number": (
        text_request("x", parameters=common_pb2.TextParameters(repeat_penalty=float("nan"))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "text.repeat_penalty",
    ),
    "task not in the enum": (
        common_pb2.GenerateRequest(task=99, inputs=[common_pb2.InputItem(text="x")]),  # type: ignore[arg-type]
        grpc.StatusCode.INVALID_ARGUMENT,
        "task",
    ),
    "non-ASCII request_id": (
        text_request("x", request_id="r\u00e9sum\u00e9"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "request_id",
    ),
    "raw prompt with a system context": (
        text_request("x", system="Be brief.", parameters=RAW),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs[0]",
    ),
    "raw prompt with tools": (
        text_request(
            "x",
            parameters=common_pb2.TextParameters(
                raw_prompt=True, tools=[common_pb2.Tool(name="f")]
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "text.raw_prompt",
    ),
    "token ids without a raw prompt": (
        common_pb2.GenerateRequest(inputs=[IDS]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs[0].tokens",
    ),
    "token ids beside text": (
        common_pb2.GenerateRequest(inputs=[common_pb2.InputItem(text="a"), IDS], text=RAW),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs[0]",
    ),
    "a prompt too long to score": (
        text_request(
            "x" * 200_001,
            parameters=common_pb2.TextParameters(raw_prompt=True, prompt_logprobs=True),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "text.prompt_logprobs",
    ),
    "task the binding does not serve": (
        common_pb2.GenerateRequest(
            task=common_pb2.TASK_IMAGE, binding="echo", inputs=[common_pb2.InputItem(text="x")]
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "task",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
async def test_bad_input_gets_details_and_the_server_keeps_serving(
    client: Client, case: str
) -> None:
    request, code, field = BAD_REQUESTS[case]
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await client.generate(request)
    details = error_details(failure.value)
    assert details.code == code
    assert field in details.violations, details
    assert "Traceback" not in details.message
    healthy = await client.generate(text_request("still here"))
    assert healthy.outputs[0].text == "still here"


def test_token_ids_are_a_text_prompt_only() -> None:
    """An image or speech service has no vocabulary: ids never reach one."""
    request = common_pb2.GenerateRequest(task=common_pb2.TASK_IMAGE, inputs=[IDS], text=RAW)
    with pytest.raises(ServiceError) as caught:
        validation.check_request(request, MIB)
    assert [v.field for v in caught.value.violations] == ["inputs[0].tokens"]


async def test_transport_rejects_what_exceeds_the_message_limit(client: Client) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await client.generate(text_request("x" * (40 * 1024 * 1024)))
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await client.generate(text_request("ok"))).outputs[0].text == "ok"


async def test_sigterm_drains_an_in_flight_stream(ttt: ServiceProcess) -> None:
    router = ServiceProcess("router", router_config([echo_binding(ttt.address)]))
    async with Client(router.address, API_KEY) as client:
        events = client.generate_stream(slow("drain", delay_ms=100, repeat=10))
        first = await anext(events)
        assert first.HasField("text_delta")
        router.popen.send_signal(signal.SIGTERM)
        rest = [event async for event in events]
    assert rest[-1].final.outputs[0].text == "drain" * 10
    assert rest[-1].final.finish_reason == common_pb2.FINISH_REASON_STOP
    assert await asyncio.to_thread(router.popen.wait, 30) == 0
    async with Client(router.address, API_KEY) as client:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.generate(text_request("after"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_bad_setting_fails_startup_naming_the_field(tmp_path: Any) -> None:
    env = {**os.environ, "GENMESH_API_KEY": API_KEY, "GENMESH_ROUTER_PORT": "not-a-port"}
    done = run_genmesh("serve", "router", env=env, timeout=60)
    assert done.returncode == 2
    assert "router.port" in done.stderr
    assert "Traceback" not in done.stderr
    config = tmp_path / "mesh.yaml"
    config.write_text("router:\n  bindings:\n    - name: x\n      tasks: [text]\n")
    env = {**os.environ, "GENMESH_API_KEY": API_KEY, "GENMESH_CONFIG": str(config)}
    done = run_genmesh("serve", "router", env=env, timeout=60)
    assert done.returncode == 2
    assert "router.bindings.0.addresses" in done.stderr


def free_port_block(size: int) -> int:
    """A base port with `size` free ports after it."""
    for base in range(52100, 60000, 17):
        try:
            for port in range(base, base + size):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port block")


def test_up_brings_the_mesh_up_and_stops_cleanly(tmp_path: Any) -> None:
    base = free_port_block(10)
    gateway_port = base + 9
    env = {**os.environ, "GENMESH_API_KEY": API_KEY}
    up = subprocess.Popen(
        [
            *(sys.executable, "-m", "genmesh", "up", "--base-port", str(base)),
            *("--gateway-port", str(gateway_port), "--log-dir", str(tmp_path)),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert up.stdout is not None
    lines = []
    for line in up.stdout:
        lines.append(line)
        if "Press Ctrl-C" in line or up.poll() is not None:
            break
    output = "".join(lines)
    shown = {line[2:7].strip(): line[10:].strip() for line in lines if line[7:10] == " > "}
    assert shown["text"], output
    assert (tmp_path / "demo.png").read_bytes().startswith(b"\x89PNG"), output
    assert (tmp_path / "demo.wav").read_bytes().startswith(b"RIFF"), output
    assert "hello" in shown["heard"].lower(), output
    assert json.loads(shown["agent"])["echoes"] == ["mesh", "sandbox", "parallel"], output
    rest = urllib.request.Request(
        f"http://127.0.0.1:{gateway_port}/v1/bindings", headers={"X-API-Key": API_KEY}
    )
    with urllib.request.urlopen(rest, timeout=30) as answer:
        assert "echo" in [b["name"] for b in json.load(answer)["bindings"]]
    children = subprocess.run(
        ["pgrep", "-P", str(up.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert children
    up.send_signal(signal.SIGINT)
    assert up.wait(60) == 0
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}"), f"orphan process {pid}"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"repeat": "many"}, "extra.repeat"),
        ({"repeat": 1e300}, "extra.repeat"),
        ({"delay_ms": [1]}, "extra.delay_ms"),
        ({"delay_ms": -5}, "extra.delay_ms"),
        ({"fail_after": "soon"}, "extra.fail_after"),
    ],
)
async def test_echo_options_the_engine_cannot_use_are_refused(
    client: Client, extra: dict[str, Any], field: str
) -> None:
    """The echo engine reads `extra` itself: a knob it cannot use is the caller's error, named."""
    request = text_request("hello")
    request.extra.update(extra)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await client.generate(request)
    details = error_details(failure.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in details.violations, details


async def test_echo_tokens_that_are_no_characters_are_invalid(client: Client) -> None:
    """The echo's tokens are code points; a surrogate's string could not be sent (INTERNAL)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.tokenizer.Detokenize(
            tokenizer_pb2.DetokenizeRequest(tokens=[104, 0xD800]), metadata=client.metadata
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tokens" in error_details(caught.value).violations


MIB = 1024 * 1024


async def test_a_conversation_takes_no_raw_prompt(client: Client) -> None:
    config = common_pb2.GenerateRequest(text=RAW)
    call = client.generation.Converse(
        iter([generation_pb2.ConverseRequest(config=config)]), metadata=client.metadata
    )
    details = await refused(call.read())
    assert "config.text.raw_prompt" in details.violations


async def test_texts_too_long_to_list_are_counted_and_refused_naming_the_text(
    client: Client,
) -> None:
    """The echo's tokens are characters: 7 MiB of text is 7 Mi tokens, whose ids and pieces take
    29 MB, more than a message carries (16 MiB). Counting them still works; listing them, or
    sending more text than a request may hold, is the caller's error, named, not the transport's
    RESOURCE_EXHAUSTED (which reads as an overload to wait out)."""
    text, larger = "x" * (7 * MIB), "x" * (9 * MIB)
    tokenizer, metadata = client.tokenizer, client.metadata
    count = await tokenizer.CountTokens(
        tokenizer_pb2.CountTokensRequest(text=text), metadata=metadata
    )
    assert count.count == len(text)
    listed = await refused(
        tokenizer.Tokenize(tokenizer_pb2.TokenizeRequest(text=text), metadata=metadata)
    )
    assert listed.reason == "RESPONSE_TOO_LARGE"
    assert "CountTokens" in listed.violations["text"]
    for too_large in (
        await refused(
            tokenizer.Tokenize(tokenizer_pb2.TokenizeRequest(text=larger), metadata=metadata)
        ),
        await refused(
            tokenizer.CountTokens(tokenizer_pb2.CountTokensRequest(text=larger), metadata=metadata)
        ),
    ):
        assert too_large.reason == "REQUEST_TOO_LARGE"
        assert "text" in too_large.violations


async def refused(call: Awaitable[object]) -> ErrorDetails:
    """The details of a call that must fail as INVALID_ARGUMENT."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT, details
    return details


async def test_echo_repeats_without_building_the_whole_echo(client: Client) -> None:
    request = text_request("ab", parameters=common_pb2.TextParameters(max_tokens=5))
    request.extra.update({"repeat": 1_000_000})
    response = await client.generate(request)
    assert response.outputs[0].text == "ababa"
    assert response.finish_reason == common_pb2.FINISH_REASON_LENGTH
