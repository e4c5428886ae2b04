"""HTTP edges in front of real routers, and the official OpenAI SDK pointed at them.

- `edge`: the session's echo ttt behind a router with bindings for every error path (a slow echo,
  one-slot bindings without a queue, with one, and with a short queue timeout, a binding whose
  service is down) and a key without the generate scope.
- `smol_edge`: SmolLM2 on llama.cpp (the ttt tests' router), where a real model matters.
- `media_edge`: the tti and audio services (their tests' fixtures) for images and speech.
- `small_edge`: the same media router behind an edge with tiny size limits.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import secrets
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types import Completion

from tests.support import API_KEY, ServiceProcess, echo_binding, router_config, running, serve

# A key the router knows, without the generate scope.
AGENT_ONLY_KEY = "gm-agent-only-" + secrets.token_hex(8)
# The slow echo's pace; a prompt of 1000 characters streams for 20 s.
DELAY_MS = 20


# The small edge's limits: bodies and router messages, and uploads.
SMALL_LIMIT = 32 * 1024
SMALL_UPLOAD = 16 * 1024


def edge_process(router: ServiceProcess, **settings: Any) -> ServiceProcess:
    return ServiceProcess("edge", {"router_address": router.address, **settings})


@pytest.fixture(scope="session")
def echo_router(ttt: ServiceProcess) -> Iterator[ServiceProcess]:
    slow = {"extra": {"delay_ms": DELAY_MS}}
    bindings = [
        {**echo_binding(ttt.address), "default": True},
        {**echo_binding(ttt.address, name="slow"), **slow},
        {**echo_binding(ttt.address, name="busy"), **slow, "max_concurrent": 1, "max_queue": 0},
        {**echo_binding(ttt.address, name="queued"), **slow, "max_concurrent": 1, "max_queue": 4},
        {
            **echo_binding(ttt.address, name="late"),
            **slow,
            "max_concurrent": 1,
            "max_queue": 1,
            "queue_timeout_seconds": 3,
        },
        echo_binding("127.0.0.1:1", name="down"),
    ]
    agent_only = {
        "name": "agent-only",
        "sha256": hashlib.sha256(AGENT_ONLY_KEY.encode()).hexdigest(),
        "scopes": ["agent"],
    }
    yield from serve("router", router_config(bindings, api_keys=[agent_only]))


@pytest.fixture(scope="session")
def edge(echo_router: ServiceProcess) -> Iterator[ServiceProcess]:
    yield from running(edge_process(echo_router))


@pytest.fixture(scope="package")
def smol_edge(smol_router: ServiceProcess) -> Iterator[ServiceProcess]:
    yield from running(edge_process(smol_router))


@pytest.fixture(scope="session")
def media_router(tti: ServiceProcess, audio: ServiceProcess) -> Iterator[ServiceProcess]:
    bindings = [
        {"name": "shapes", "tasks": ["image", "image_edit"], "addresses": [tti.address]},
        {"name": "piper", "tasks": ["speech"], "addresses": [audio.address]},
        {"name": "whisper", "tasks": ["transcription"], "addresses": [audio.address]},
    ]
    yield from serve("router", router_config(bindings))


@pytest.fixture(scope="session")
def media_edge(media_router: ServiceProcess) -> Iterator[ServiceProcess]:
    yield from running(edge_process(media_router))


@pytest.fixture(scope="session")
def small_edge(media_router: ServiceProcess) -> Iterator[ServiceProcess]:
    yield from running(
        edge_process(
            media_router,
            max_body_bytes=SMALL_LIMIT,
            max_message_bytes=SMALL_LIMIT,
            max_upload_bytes=SMALL_UPLOAD,
        )
    )


def sdk(edge: ServiceProcess, key: str = API_KEY, **options: Any) -> OpenAI:
    """The official client as a user points it at genmesh (no retries: tests see each status)."""
    return OpenAI(base_url=f"http://{edge.address}/v1", api_key=key, max_retries=0, **options)


def async_sdk(edge: ServiceProcess, key: str = API_KEY, **options: Any) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"http://{edge.address}/v1", api_key=key, max_retries=0, **options)


@pytest.fixture
def client(edge: ServiceProcess) -> Iterator[OpenAI]:
    with sdk(edge) as opened:
        yield opened


@pytest.fixture
async def aclient(edge: ServiceProcess) -> AsyncIterator[AsyncOpenAI]:
    async with async_sdk(edge) as opened:
        yield opened


@dataclass
class Raw:
    """An HTTP answer read without an SDK: what any client would see."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw(
    edge: ServiceProcess,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Raw:
    connection = http.client.HTTPConnection(edge.address, timeout=60)
    try:
        sent = {
            "Authorization": f"Bearer {API_KEY}",
            "Content-Type": "application/json",
            **(headers or {}),
        }
        connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        answer = response.read()
        return Raw(response.status, {k.lower(): v for k, v in response.getheaders()}, answer)
    finally:
        connection.close()


def multipart(
    fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]
) -> tuple[bytes, str]:
    boundary = "genmesh-test-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    for name, (filename, data, kind) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: {kind}\r\n\r\n'
        )
        parts.append(head.encode() + data + b"\r\n")
    return b"".join(
        parts
    ) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def streamed_completion(chunks: Iterable[Completion]) -> list[dict[str, Any]]:
    """A streamed legacy completion put together: each choice's text, finish reason and
    logprobs as the whole reply has them, to compare the two."""
    choices: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            whole = choices.setdefault(choice.index, {"text": "", "logprobs": None})
            whole["text"] += choice.text
            if choice.finish_reason:
                whole["finish_reason"] = choice.finish_reason
            if choice.logprobs:
                joined = whole["logprobs"] = whole["logprobs"] or {}
                for name, values in choice.logprobs.model_dump().items():
                    joined[name] = joined.get(name, []) + values
    return [choices[index] for index in sorted(choices)]


def whole_completion(completion: Completion) -> list[dict[str, Any]]:
    """A whole legacy completion's choices, in `streamed_completion`'s shape."""
    return [
        {
            "text": c.text,
            "finish_reason": c.finish_reason,
            "logprobs": c.logprobs.model_dump() if c.logprobs else None,
        }
        for c in completion.choices
    ]
