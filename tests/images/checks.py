"""Requests of each kind, as a user of the cluster sends them with the chart's API key: through
the router with the project's `genmesh` CLI, and over HTTP to the REST gateway and the edge."""

from __future__ import annotations

import json
import urllib.request
import wave
from collections.abc import Callable
from pathlib import Path

from tests.images.conftest import MeshPod
from tests.support import run_genmesh

Check = Callable[[MeshPod, Path], None]


def cli(pod: MeshPod, *args: str) -> str:
    result = run_genmesh(*args, "--address", pod.address("router"), "--api-key", pod.api_key())
    assert result.returncode == 0, result.stderr
    return result.stdout


def text(pod: MeshPod, tmp_path: Path) -> None:
    assert cli(pod, "generate", "Name a colour.", "--max-tokens", "8").strip()


def image(pod: MeshPod, tmp_path: Path) -> None:
    out = tmp_path / "shape.png"
    cli(pod, "image", "a red circle", "-o", str(out), "--steps", "2")
    assert out.read_bytes().startswith(b"\x89PNG")


def speech(pod: MeshPod, tmp_path: Path) -> None:
    """Speech there and back: synthesis, then recognition of what was synthesised."""
    out = tmp_path / "hello.wav"
    cli(pod, "speak", "Hello from the image.", "-o", str(out))
    with wave.open(str(out)) as audio:
        assert audio.getnframes() > audio.getframerate() // 2
    assert "hello" in cli(pod, "transcribe", str(out)).lower()


def agent(pod: MeshPod, tmp_path: Path) -> None:
    """An agent run, in a sandbox whose every isolation layer (namespaces, rlimits, Landlock,
    seccomp, ...) is in force under the chart's securityContext: the sandbox reports that in a
    health entry of its own."""
    assert pod.serving("sandbox", "genmesh.sandbox.isolation"), pod.containers["sandbox"].logs()
    program = tmp_path / "program.py"
    program.write_text("squares = [x * x for x in range(10)]\nprint(len(squares))\nsum(squares)\n")
    report = json.loads(cli(pod, "agent", "run", str(program), "--json"))
    assert report["error"] is None
    assert report["result"] == 285


def post(url: str, body: object, headers: dict[str, str]) -> dict[str, object]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json", **headers}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200
        answer: dict[str, object] = json.loads(response.read())
        return answer


def rest(pod: MeshPod, tmp_path: Path) -> None:
    request = {
        "task": "TASK_TEXT",
        "inputs": [{"text": "Name a colour."}],
        "text": {"max_tokens": 8},
    }
    answer = post(pod.url("gateway", "/v1/generate"), request, {"X-API-Key": pod.api_key()})
    assert answer["outputs"] and answer["finish_reason"]


def openai_chat(pod: MeshPod, tmp_path: Path) -> None:
    body = {"model": "text", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
    headers = {"Authorization": f"Bearer {pod.api_key()}"}
    answer = post(pod.url("edge", "/v1/chat/completions"), body, headers)
    assert answer["choices"]
    # The playground is in the image, at the edge's root.
    with urllib.request.urlopen(pod.url("edge", "/"), timeout=30) as page:
        assert page.status == 200
        assert b'<div id="app"' in page.read()
