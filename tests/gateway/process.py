"""The REST gateway as a subprocess on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def build_gateway() -> Path:
    """The gateway binary, built (or found up to date) by the script `genmesh up` uses too."""
    out = subprocess.run(
        [str(ROOT / "services/gateway/build.sh")], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


class GatewayProcess:
    """The gateway in front of `router`; it announces its port in the services' ready line."""

    def __init__(self, router: str, *flags: str, env: dict[str, str] | None = None) -> None:
        self.log_path = Path(tempfile.mkdtemp(prefix="genmesh-gateway-")) / "stderr.log"
        command = [str(build_gateway()), f"-router={router}", "-listen=127.0.0.1:0", *flags]
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=log, env={**os.environ, **(env or {})}
            )
        assert self.popen.stdout is not None
        ready = json.loads(self.popen.stdout.readline() or "{}")
        if not ready.get("ready"):
            self.terminate()
            raise RuntimeError(f"gateway did not start:\n{self.log_path.read_text()}")
        self.port = int(ready["port"])

    def terminate(self) -> None:
        self.popen.terminate()
        self.popen.wait(30)
