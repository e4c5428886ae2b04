"""The Go code: the gateway's own tests (TLS to the router, metadata forwarding, configuration
from env), and gofmt and go vet on the gateway and the Go client."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.gateway.process import ROOT

MODULES = (ROOT / "services/gateway", ROOT / "clients/go")


def run(*command: str, cwd: Path) -> str:
    result = subprocess.run(
        command,
        cwd=cwd,
        env={**os.environ, "GOFLAGS": "-buildvcs=false"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_gateway_go_tests_pass() -> None:
    run("go", "test", ".", cwd=MODULES[0])


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.name)
def test_go_code_is_formatted_and_vetted(module: Path) -> None:
    assert run("gofmt", "-l", ".", cwd=module) == ""
    run("go", "vet", ".", cwd=module)
