"""Every CPU engine serves the same factual prompt sensibly, through the router.

The remote engine talks to a real OpenAI-compatible server (llama-cpp-python's, on the same GGUF)
that requires an API key, which reaches the engine through the provider-secret environment.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from genmesh.client import Client, error_details, text_request
from genmesh.ttt.models import default_gguf, derived_model
from genmesh.v1 import common_pb2, tokenizer_pb2
from tests.support import API_KEY, ServiceProcess, router_config
from tests.ttt.conftest import binding

SYSTEM = "You are a helpful assistant."
ENGINES = {
    "llama": {"engine": "llama.cpp"},
    "onnx": {"engine": "onnxruntime-genai"},
    "hf": {"engine": "transformers"},
}
UPSTREAM_KEY = "sk-test-" + secrets.token_hex(8)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def openai_server() -> Iterator[str]:
    pytest.importorskip("llama_cpp.server")
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(default_gguf()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--api_key",
            UPSTREAM_KEY,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(600):
            try:
                request = urllib.request.Request(
                    f"{url}/models", headers={"Authorization": f"Bearer {UPSTREAM_KEY}"}
                )
                with urllib.request.urlopen(request, timeout=1):
                    break
            except OSError:
                assert process.poll() is None, "the OpenAI-compatible server exited"
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture(scope="module")
def engines_router(openai_server: str) -> Iterator[ServiceProcess]:
    models: list[dict[str, Any]] = [
        {"name": name, "system_prompt": SYSTEM, **spec} for name, spec in ENGINES.items()
    ]
    # The one-request-at-a-time llama.cpp engine samples through llama-cpp-python's chain.
    models.append({"name": "llama-serial", "engine": "llama.cpp", "options": {"batching": False}})
    models.append(
        {
            "name": "remote",
            "engine": "openai",
            "system_prompt": SYSTEM,
            "options": {
                "base_url": openai_server,
                "remote_model": "smollm2",
                "api_key_secret": "upstream",
                "context_size": 2048,
            },
        }
    )
    ttt = ServiceProcess(
        "ttt", {"models": models}, extra_env={"GENMESH_SECRET_UPSTREAM": UPSTREAM_KEY}
    )
    names = [m["name"] for m in models]
    router = ServiceProcess("router", router_config([binding(n, ttt.address, n) for n in names]))
    yield router
    router.terminate()
    ttt.terminate()


@pytest.fixture
async def client(engines_router: ServiceProcess) -> AsyncIterator[Client]:
    async with Client(engines_router.address, API_KEY) as connected:
        yield connected


@pytest.mark.parametrize("name", [*ENGINES, "remote"])
async def test_engine_answers_the_capital_of_france(client: Client, name: str) -> None:
    params = common_pb2.TextParameters(temperature=0, max_tokens=32)
    request = text_request("What is the capital of France?", binding=name, parameters=params)
    deltas = []
    final = None
    async for event in client.generate_stream(request):
        if event.HasField("text_delta"):
            deltas.append(event.text_delta.text)
        elif event.HasField("final"):
            final = event.final
    assert final is not None
    assert "Paris" in final.outputs[0].text
    assert "".join(deltas) == final.outputs[0].text
    assert final.finish_reason in (common_pb2.FINISH_REASON_STOP, common_pb2.FINISH_REASON_LENGTH)
    assert final.usage.completion_tokens > 0
    if name != "remote":  # llama.cpp's server sends no usage when streaming
        assert final.usage.prompt_tokens > 5


@pytest.mark.parametrize("name", [*ENGINES, "remote"])
async def test_engine_continues_a_raw_prompt(client: Client, name: str) -> None:
    """No chat template: the model continues the text (the remote engine through its upstream's
    legacy completions)."""
    params = common_pb2.TextParameters(temperature=0, max_tokens=4, raw_prompt=True)
    request = text_request("1, 2, 3, 4, 5, 6,", binding=name, parameters=params)
    response = await client.generate(request)
    assert response.outputs[0].text.startswith(" 7,"), response.outputs[0].text


@pytest.mark.parametrize("name", ENGINES)
async def test_engine_max_tokens_and_tokenizer(client: Client, name: str) -> None:
    params = common_pb2.TextParameters(max_tokens=4)
    response = await client.generate(
        text_request("Write a long essay.", binding=name, parameters=params)
    )
    assert response.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert response.usage.completion_tokens == 4
    text = "Tokenizers split words, like 'unbelievable', into pieces."
    tokens = await client.tokenizer.Tokenize(
        tokenizer_pb2.TokenizeRequest(binding=name, text=text), metadata=client.metadata
    )
    assert "".join(tokens.pieces) == text
    back = await client.tokenizer.Detokenize(
        tokenizer_pb2.DetokenizeRequest(binding=name, tokens=tokens.tokens),
        metadata=client.metadata,
    )
    assert back.text == text


async def test_remote_engine_has_no_tokenizer(client: Client) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.tokenizer.Tokenize(
            tokenizer_pb2.TokenizeRequest(binding="remote", text="hi"), metadata=client.metadata
        )
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.UNIMPLEMENTED
    assert details.reason == "TOKENIZER_UNAVAILABLE"


def test_derived_models_exist() -> None:
    assert (derived_model("onnx") / "genai_config.json").is_file()
    assert (derived_model("hf") / "config.json").is_file()


@pytest.mark.parametrize("name", ["llama", "llama-serial", "hf", "remote"])
async def test_logit_bias_forces_a_token_and_penalties_end_a_repetition(
    client: Client, name: str
) -> None:
    """Greedy, so each answer is the model's own; the repeat penalty is off, so only OpenAI's
    penalties can break the loop."""
    tokenized = await client.tokenizer.Tokenize(
        tokenizer_pb2.TokenizeRequest(binding="llama", text=" banana"), metadata=client.metadata
    )
    (banana,) = tokenized.tokens
    forced = common_pb2.TextParameters(temperature=0, max_tokens=3, logit_bias={banana: 100})
    answer = await client.generate(
        text_request("What is the capital of France?", binding=name, parameters=forced)
    )
    assert answer.outputs[0].text.strip() == "banana banana banana", answer.outputs[0].text
    if name.startswith("llama"):  # the engines with logprobs: the model's own, unbiased
        forced.logprobs = True
        scored = await client.generate(
            text_request("What is the capital of France?", binding=name, parameters=forced)
        )
        assert all(entry.logprob < -3 for entry in scored.outputs[0].logprobs)

    def loop(penalty: float = 0) -> common_pb2.GenerateRequest:
        params = common_pb2.TextParameters(
            temperature=0,
            max_tokens=12,
            repeat_penalty=1,
            raw_prompt=True,
            presence_penalty=penalty,
            frequency_penalty=penalty,
        )
        return text_request("a, a, a, a, a, a, a, a,", binding=name, parameters=params)

    def repeats(response: common_pb2.GenerateResponse) -> int:
        return [part.strip() for part in response.outputs[0].text.split(",")].count("a")

    free = await client.generate(loop())
    penalised = await client.generate(loop(penalty=2))
    assert repeats(free) >= 5, free.outputs[0].text
    assert repeats(penalised) <= 2, penalised.outputs[0].text


async def test_an_engine_without_penalties_refuses_them(client: Client) -> None:
    params = common_pb2.TextParameters(frequency_penalty=1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.generate(text_request("hi", binding="onnx", parameters=params))
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "text.frequency_penalty" in details.violations


# SmolLM2's end of turn, <|im_end|>: biased up, every reply ends at once.
END_OF_TURN = 2


@pytest.mark.parametrize("name", ["llama", "llama-serial", "hf"])
async def test_min_tokens_and_ignore_eos_hold_off_the_end(client: Client, name: str) -> None:
    """A reply made to end at its first token goes on to exactly min_tokens, or to max_tokens."""

    async def reply(**fields: Any) -> common_pb2.GenerateResponse:
        params = common_pb2.TextParameters(
            temperature=0, max_tokens=32, logit_bias={END_OF_TURN: 100}, **fields
        )
        request = text_request("Tell me about the sea.", binding=name, parameters=params)
        return await client.generate(request)

    short = await reply()
    assert short.finish_reason == common_pb2.FINISH_REASON_STOP
    assert short.usage.completion_tokens <= 1
    held = await reply(min_tokens=10)
    assert held.finish_reason == common_pb2.FINISH_REASON_STOP
    assert held.usage.completion_tokens == 10, held.outputs[0].text
    endless = await reply(ignore_eos=True)
    assert endless.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert endless.usage.completion_tokens == 32


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"ignore_eos": True}, "text.ignore_eos"),
        ({"min_tokens": 20}, "text.min_tokens"),
    ],
)
async def test_holding_off_the_end_is_refused_with_a_grammar(
    client: Client, fields: dict[str, Any], named: str
) -> None:
    """A grammar that allows only its end would leave no token to sample (llama.cpp aborted the
    process on it)."""
    params = common_pb2.TextParameters(temperature=0.8, **fields)
    params.constraint.choices.choices.extend(["yes", "no"])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.generate(text_request("Yes or no?", binding="llama-serial", parameters=params))
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert named in details.violations
    answer = await client.generate(text_request("Hi", binding="llama-serial"))
    assert answer.outputs[0].text


async def test_onnx_min_tokens_holds_off_the_end(client: Client) -> None:
    """onnxruntime-genai has no logit bias: a short answer of its own goes on to min_tokens."""
    params = common_pb2.TextParameters(temperature=0, max_tokens=64)
    request = text_request("What is the capital of France?", binding="onnx", parameters=params)
    short = await client.generate(request)
    assert short.finish_reason == common_pb2.FINISH_REASON_STOP
    ended = short.usage.completion_tokens
    request.text.min_tokens = ended + 8
    held = await client.generate(request)
    assert held.usage.completion_tokens >= ended + 8, held.outputs[0].text


async def test_an_engine_that_cannot_hold_off_the_end_refuses_to(client: Client) -> None:
    """The remote engine's upstream may not know vLLM's min_tokens: refused, not ignored."""
    params = common_pb2.TextParameters(ignore_eos=True)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.generate(text_request("hi", binding="remote", parameters=params))
    assert error_details(caught.value).code == grpc.StatusCode.FAILED_PRECONDITION
