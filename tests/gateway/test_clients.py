"""The Go and Node example clients get the same answers from the mesh as the Python client."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from genmesh.client import Client, SyncClient, text_request
from genmesh.v1 import common_pb2
from tests.gateway.process import ROOT
from tests.support import API_KEY, ServiceProcess

PROMPT = "The same answer in every language."
MAX_TOKENS = 16


@pytest.fixture(scope="session")
def go_client() -> list[str]:
    """The Go example, built into the cache (Go's build cache makes a rebuild quick)."""
    binary = ROOT / ".cache/bin/genmesh-example-go"
    subprocess.run(
        ["go", "build", "-trimpath", "-o", str(binary), "."],
        cwd=ROOT / "clients/go",
        env={**os.environ, "GOFLAGS": "-buildvcs=false"},
        check=True,
    )
    return [str(binary)]


@pytest.fixture(scope="session")
def node_client() -> list[str]:
    folder = ROOT / "clients/node"
    if not (folder / "node_modules/.package-lock.json").is_file():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=folder, check=True)
    return ["node", str(folder / "example.js")]


def summary(response: dict[str, Any]) -> dict[str, Any]:
    """What must agree across clients; ids and timings differ per call."""
    return {
        "binding": response["binding"],
        "model": response["model"],
        "text": "".join(output["text"] for output in response["outputs"]),
        "finish_reason": response["finish_reason"],
        "usage": {k: int(v) for k, v in response["usage"].items()},
    }


def as_dict(response: common_pb2.GenerateResponse) -> dict[str, Any]:
    return json_format.MessageToDict(
        response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def python_summary(
    unary: common_pb2.GenerateResponse, events: list[common_pb2.StreamEvent]
) -> dict[str, Any]:
    final = next(e.final for e in events if e.HasField("final"))
    return {
        "generate": summary(as_dict(unary)),
        "stream_text": "".join(e.text_delta.text for e in events if e.HasField("text_delta")),
        "stream_final": summary(as_dict(final)),
    }


def request() -> common_pb2.GenerateRequest:
    return text_request(PROMPT, parameters=common_pb2.TextParameters(max_tokens=MAX_TOKENS))


async def python_answers(router: ServiceProcess) -> dict[str, Any]:
    """The asyncio client's answers, which the others must match."""
    async with Client(router.address, API_KEY) as client:
        unary = await client.generate(request(), timeout=60)
        events = [event async for event in client.generate_stream(request(), timeout=60)]
    return python_summary(unary, events)


def python_sync_answers(router: ServiceProcess) -> dict[str, Any]:
    with SyncClient(router.address, API_KEY) as client:
        unary = client.generate(request(), timeout=60)
        events = list(client.generate_stream(request(), timeout=60))
    return python_summary(unary, events)


def client_answers(command: list[str], router: ServiceProcess, dash: str) -> dict[str, Any]:
    """Runs an example client with --json and the same request as the Python one."""
    out = subprocess.run(
        [
            *command,
            f"{dash}address={router.address}",
            f"{dash}key={API_KEY}",
            f"{dash}max-tokens={MAX_TOKENS}",
            f"{dash}json",
            PROMPT,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    answers = json.loads(out.stdout)
    return {
        "generate": summary(answers["generate"]),
        "stream_text": answers["stream_text"],
        "stream_final": summary(answers["stream_final"]),
    }


async def test_go_client_matches_python(router: ServiceProcess, go_client: list[str]) -> None:
    expected = await python_answers(router)
    assert expected["generate"]["text"] == PROMPT[:MAX_TOKENS]
    assert expected["generate"]["finish_reason"] == "FINISH_REASON_LENGTH"
    assert client_answers(go_client, router, "-") == expected


async def test_python_sync_client_matches_asyncio(router: ServiceProcess) -> None:
    assert await asyncio.to_thread(python_sync_answers, router) == await python_answers(router)


async def test_node_client_matches_python(router: ServiceProcess, node_client: list[str]) -> None:
    assert client_answers(node_client, router, "--") == await python_answers(router)


def test_clients_report_a_bad_key(
    router: ServiceProcess, go_client: list[str], node_client: list[str]
) -> None:
    for command, dash in ((go_client, "-"), (node_client, "--")):
        out = subprocess.run(
            [*command, f"{dash}address={router.address}", f"{dash}key=wrong", "hi"],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 1
        assert "invalid API key" in out.stderr, Path(command[-1]).name
