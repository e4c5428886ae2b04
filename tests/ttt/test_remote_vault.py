"""The remote engine's API key comes from a real Vault server, end to end.

A real ttt service reads the key from Vault KV v2 and forwards generations to a real
OpenAI-compatible server (llama-cpp-python's, on the embedded GGUF) that requires it, behind a real
router. The service's periodic refresh is set to an hour, so a rotation that works at once shows
the re-read on refusal at work. The tests run in file order: each leaves the upstream as the next
expects.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import grpc
import pytest

from genmesh.client import Client, error_details, text_request
from genmesh.ttt.models import default_gguf
from genmesh.v1 import common_pb2
from tests.runtime.conftest import VaultServer, start_vault, vault, vault_bin  # noqa: F401
from tests.support import API_KEY, ServiceProcess, router_config
from tests.ttt.conftest import binding

SECRET = "upstream"
STARTUP_SECONDS = 300


def new_key() -> str:
    return "sk-test-" + secrets.token_hex(12)


@dataclass
class Upstream:
    """llama-cpp-python's OpenAI-compatible server on a fixed port, restarted to change its key."""

    port: int
    keys: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def key(self) -> str:
        return self.keys[-1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, key: str) -> None:
        self.stop()
        self.keys.append(key)
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "llama_cpp.server", "--model", str(default_gguf())),
                *("--host", "127.0.0.1", "--port", str(self.port), "--api_key", key),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        request = urllib.request.Request(
            f"{self.url}/models", headers={"Authorization": f"Bearer {key}"}
        )
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(request, timeout=1):
                    return
            except OSError:
                assert self.process.poll() is None, "the OpenAI-compatible server exited"
                time.sleep(0.2)
        pytest.fail("the OpenAI-compatible server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)
            self.process = None


@dataclass
class Remote:
    vault: VaultServer
    path: str
    upstream: Upstream
    ttt: ServiceProcess
    router: ServiceProcess

    def store(self, key: str) -> None:
        store(self.vault, self.path, key)


def store(server: VaultServer, path: str, key: str) -> None:
    """Puts `key` in Vault as the provider secret; the ttt service is not told."""
    server.admin().secrets.kv.v2.create_or_update_secret(
        path=f"{path}/providers", secret={SECRET: key}, mount_point="secret"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def remote(vault: VaultServer) -> Iterator[Remote]:  # noqa: F811 - the imported fixture
    pytest.importorskip("llama_cpp.server")
    key = new_key()
    upstream = Upstream(free_port())
    upstream.start(key)
    path = f"genmesh-{uuid.uuid4().hex[:8]}"
    store(vault, path, key)
    model = {
        "name": "remote",
        "engine": "openai",
        "options": {
            "base_url": upstream.url,
            "remote_model": "smollm2",
            "api_key_secret": SECRET,
            "context_size": 2048,
        },
    }
    settings = {"address": vault.address, "token": vault.root_token, "path": path}
    ttt = ServiceProcess("ttt", {"models": [model], "vault": {**settings, "refresh_seconds": 3600}})
    router = ServiceProcess("router", router_config([binding("remote", ttt.address, "remote")]))
    yield Remote(vault, path, upstream, ttt, router)
    router.terminate()
    ttt.terminate()
    upstream.stop()


@pytest.fixture
async def client(remote: Remote) -> AsyncIterator[Client]:
    async with Client(remote.router.address, API_KEY) as connected:
        yield connected


async def ask(client: Client) -> common_pb2.GenerateResponse:
    parameters = common_pb2.TextParameters(temperature=0, max_tokens=8)
    return await client.generate(
        text_request("Say hello.", binding="remote", parameters=parameters)
    )


async def refused(client: Client) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ask(client)
    return caught.value


async def test_the_key_from_vault_gets_text_back(client: Client) -> None:
    response = await ask(client)
    assert response.outputs[0].text
    assert response.usage.completion_tokens > 0


async def test_a_key_rotated_in_vault_is_used_without_a_restart(
    client: Client, remote: Remote
) -> None:
    rotated = new_key()
    remote.store(rotated)
    remote.upstream.start(rotated)
    response = await ask(client)
    assert response.outputs[0].text


async def test_a_refused_key_is_permission_denied_without_the_key(
    client: Client, remote: Remote
) -> None:
    in_vault = remote.upstream.key
    remote.upstream.start(new_key())
    error = await refused(client)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    details = error_details(error)
    assert details.reason == "UPSTREAM_KEY_REFUSED"
    assert details.metadata["http_status"] == "401"
    shown = f"{error.details()} {details}"
    assert in_vault not in shown
    assert remote.upstream.key not in shown


async def test_an_upstream_that_is_down_is_unavailable(client: Client, remote: Remote) -> None:
    remote.upstream.stop()
    error = await refused(client)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "upstream endpoint of model 'remote' cannot be reached" in (error.details() or "")


def test_no_key_reaches_the_logs(remote: Remote) -> None:
    for logs in (remote.ttt.logs(), remote.router.logs()):
        for value in [*remote.upstream.keys, remote.vault.root_token]:
            assert value not in logs
