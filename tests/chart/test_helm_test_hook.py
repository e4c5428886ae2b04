"""The `helm test` pod's health check, run for real against services on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys

from tests.chart.conftest import Rendered
from tests.support import ServiceProcess


def hook_command(rendered: Rendered) -> tuple[list[str], list[str]]:
    """The test pod's command and its health-check targets."""
    (pod,) = rendered.of_kind("Pod")
    container = pod["spec"]["containers"][0]
    command: list[str] = [*container["command"], container["args"][0]]
    targets: list[str] = container["args"][1:]
    return command, targets


def run_hook(rendered: Rendered, targets: list[str]) -> subprocess.CompletedProcess[str]:
    command, _ = hook_command(rendered)
    assert command[0] == "python"
    return subprocess.run(
        [sys.executable, *command[1:], *targets],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_hook_passes_when_every_service_serves(
    rendered_sets: dict[str, Rendered], router: ServiceProcess, ttt: ServiceProcess
) -> None:
    rendered = rendered_sets["defaults"]
    _, targets = hook_command(rendered)
    names = {t.split(":")[1].split(".")[0]: t.rsplit(":", 1)[1] for t in targets}
    local = [
        f"grpc:127.0.0.1:{router.port}:{names['genmesh-router']}",
        f"grpc:127.0.0.1:{ttt.port}:{names['genmesh-ttt-headless']}",
    ]
    result = run_hook(rendered, local)
    assert result.returncode == 0, result.stdout + result.stderr
    # Each service answers SERVING, overall and under its own name.
    assert result.stdout.count(" SERVING\n") == 4, result.stdout


def test_hook_fails_when_a_service_is_down(
    rendered_sets: dict[str, Rendered], router: ServiceProcess
) -> None:
    rendered = rendered_sets["defaults"]
    dead = free_port()
    result = run_hook(
        rendered,
        [
            f"grpc:127.0.0.1:{router.port}:genmesh.v1.GenerationService",
            f"grpc:127.0.0.1:{dead}:genmesh.v1.SandboxService",
        ],
    )
    assert result.returncode != 0
    assert "127.0.0.1 genmesh.v1.SandboxService" in result.stderr
    assert "UNAVAILABLE" in result.stdout
