"""The gateway's own Go tests: TLS to the router, metadata forwarding, configuration from env."""

from __future__ import annotations

import os
import subprocess

from tests.gateway.conftest import ROOT


def test_gateway_go_tests_pass() -> None:
    result = subprocess.run(
        ["go", "test", "."],
        cwd=ROOT / "services/gateway",
        env={**os.environ, "GOFLAGS": "-buildvcs=false"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
