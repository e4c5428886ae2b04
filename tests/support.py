"""Real genmesh services as subprocesses on free loopback ports, for tests and benchmarks."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from genmesh.client import Client
from genmesh.v1 import inference_pb2, inference_pb2_grpc

API_KEY = "gm-test-" + secrets.token_hex(8)
INTERNAL_KEY = "gm-internal-" + secrets.token_hex(8)
STARTUP_TIMEOUT_S = 300.0


def idle(details: Mapping[str, Any]) -> bool:
    """A ttt model's GetModelInfo details say no generation holds, waits for or runs on it."""
    return not (details["active"] or details.get("queued") or details.get("running"))


def until_idle(ttt: ServiceProcess, model: str, timeout: float = 30.0) -> None:
    """Waits until no generation runs or waits on `model` of the ttt service `ttt`."""
    request = inference_pb2.InferenceServiceGetModelInfoRequest(model=model)
    metadata = (("x-api-key", INTERNAL_KEY),)
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(ttt.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        while True:
            answer = stub.GetModelInfo(request, metadata=metadata, timeout=10)
            details = dict(answer.model.details)
            if idle(details):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{model} still busy {timeout:.0f} s on: {details}")
            time.sleep(0.02)


class ServiceProcess:
    """A `genmesh serve` subprocess; `port` is known once it announced it was ready."""

    def __init__(
        self,
        service: str,
        config: dict[str, Any],
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.service = service
        self.dir = Path(tempfile.mkdtemp(prefix=f"genmesh-{service}-"))
        config_path = self.dir / "mesh.yaml"
        config_path.write_text(yaml.safe_dump({service: {"port": 0, **config}}))
        self.log_path = self.dir / "stderr.log"
        env = {
            **os.environ,
            "GENMESH_CONFIG": str(config_path),
            "GENMESH_API_KEY": API_KEY,
            "GENMESH_INTERNAL_KEY": INTERNAL_KEY,
            **(extra_env or {}),
        }
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "genmesh", "serve", service],
                env=env,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        self.port = self._wait_ready()
        self.address = f"127.0.0.1:{self.port}"

    def _wait_ready(self) -> int:
        assert self.popen.stdout is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.popen.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.service} exited during startup:\n{self.logs()}")
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("ready"):
                return int(event["port"])
        raise RuntimeError(f"{self.service} did not become ready:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, message: str) -> list[dict[str, Any]]:
        """Structured log events with this message."""
        found = []
        for line in self.logs().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("message") == message:
                found.append(entry)
        return found

    def wait_for_event(self, message: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in self.events(message):
                if all(entry.get(k) == v for k, v in fields.items()):
                    return entry
            time.sleep(0.05)
        raise AssertionError(
            f"no '{message}' event with {fields} in {self.service}:\n{self.logs()}"
        )

    def terminate(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


def router_config(bindings: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"bindings": bindings, "health_check_interval_seconds": 0.2, **extra}


def echo_binding(*addresses: str, name: str = "echo") -> dict[str, Any]:
    return {
        "name": name,
        "tasks": ["text"],
        "addresses": list(addresses),
        "engine": "echo",
        "model": "echo",
    }


def serve(service: str, config: dict[str, Any]) -> Iterator[ServiceProcess]:
    """A fixture's body (`yield from serve(...)`): the service runs for the fixture's scope."""
    return running(ServiceProcess(service, config))


def running(process: ServiceProcess) -> Iterator[ServiceProcess]:
    """A fixture's body for a process started otherwise: it stops with the fixture's scope."""
    yield process
    process.terminate()


def client_fixture(service: str) -> Any:
    """A fixture that gives each test a `Client` with the test key on the service that the
    fixture named `service` runs; it takes the name of the module attribute it is assigned to."""

    @pytest.fixture
    async def client(request: pytest.FixtureRequest) -> AsyncIterator[Client]:
        process: ServiceProcess = request.getfixturevalue(service)
        async with Client(process.address, API_KEY) as connected:
            yield connected

    return client


def run_genmesh(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`genmesh ARGS` as a user runs it, with its exit status and output captured."""
    return subprocess.run(
        [sys.executable, "-m", "genmesh", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_cli(router: ServiceProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """A `genmesh` client command against ROUTER with the test key."""
    return run_genmesh(*args, "--address", router.address, "--api-key", API_KEY)
