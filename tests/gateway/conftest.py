"""A mesh (ttt with the echo engine, the router) and the REST gateway in front of it, each a real
process on a free loopback port, plus a small HTTP helper over the standard library.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CORS_ORIGIN = "http://app.example"
MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class Mesh:
    """Where the router listens and the key it accepts."""

    address: str
    api_key: str


@dataclass(frozen=True)
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: Any


class Rest:
    """JSON over one keep-alive HTTP connection to the gateway."""

    def __init__(self, port: int, api_key: str) -> None:
        self.port = port
        self.api_key = api_key

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def headers(self, key: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **(extra or {})}
        if key is not None:
            headers["X-API-Key"] = key
        return headers

    def call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        raw: bytes | None = None,
        key: str | None = "",
        headers: dict[str, str] | None = None,
    ) -> Response:
        """`key=""` sends the mesh's key, `None` sends none; `raw` sends bytes as they are."""
        payload = raw if raw is not None else None if body is None else json.dumps(body).encode()
        conn = self.connection()
        try:
            conn.request(
                method, path, payload, self.headers(self.api_key if key == "" else key, headers)
            )
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        parsed = json.loads(data) if data.strip() else None
        return Response(response.status, response.headers, parsed)

    @contextlib.contextmanager
    def stream(self, path: str, body: object) -> Iterator[http.client.HTTPResponse]:
        """The open response of a streaming call, to read line by line; closed on exit."""
        conn = self.connection()
        try:
            conn.request("POST", path, json.dumps(body).encode(), self.headers(self.api_key))
            yield conn.getresponse()
        finally:
            conn.close()


class Service:
    """`genmesh serve <name>` (or `command`) with its stderr in a log file; ready once it says so
    on stdout."""

    def __init__(
        self, name: str, env: dict[str, str], log_dir: Path, command: list[str] | None = None
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log: IO[bytes] = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command or [sys.executable, "-m", "genmesh", "serve", name],
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )

    def wait_ready(self) -> int:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("ready"):
                    return int(event["port"])
        pytest.fail(f"{self.name} exited during startup:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    run_dir = tmp_path_factory.mktemp("mesh")
    key = "gm-test-" + secrets.token_urlsafe(16)
    env = {
        **os.environ,
        "GENMESH_API_KEY": key,
        "GENMESH_INTERNAL_KEY": "gm-internal-" + secrets.token_urlsafe(16),
        "GENMESH_TTT_PORT": "0",
        "GENMESH_ROUTER_PORT": "0",
    }
    started: list[Service] = []
    try:
        ttt = Service("ttt", env, run_dir)
        started.append(ttt)
        ttt_port = ttt.wait_ready()
        binding = {
            "name": "echo",
            "tasks": ["text"],
            "engine": "echo",
            "model": "echo",
            "description": "deterministic echo engine",
            "addresses": [f"127.0.0.1:{ttt_port}"],
        }
        config = run_dir / "mesh.yaml"
        config.write_text(yaml.safe_dump({"router": {"bindings": [binding]}}))
        router = Service("router", {**env, "GENMESH_CONFIG": str(config)}, run_dir)
        started.append(router)
        yield Mesh(f"127.0.0.1:{router.wait_ready()}", key)
    finally:
        for service in reversed(started):
            service.stop()


def build_gateway() -> Path:
    """The gateway binary, built (or found up to date) by the same script `genmesh up` uses."""
    out = subprocess.run(
        [str(ROOT / "services/gateway/build.sh")], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def rest(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rest]:
    command = [
        str(build_gateway()),
        f"-router={mesh.address}",
        "-listen=127.0.0.1:0",
        f"-cors-origins={CORS_ORIGIN}",
        f"-max-body-bytes={MAX_BODY_BYTES}",
    ]
    gateway = Service("gateway", dict(os.environ), tmp_path_factory.mktemp("gateway"), command)
    try:
        yield Rest(gateway.wait_ready(), mesh.api_key)
    finally:
        gateway.stop()
