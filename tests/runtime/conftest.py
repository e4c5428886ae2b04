"""A real Vault-compatible server in dev mode on a free loopback port, for the secrets tests,
and a Kubernetes TokenReview endpoint over HTTPS for its kubernetes auth method.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import hvac
import jwt
import pytest
import requests
import trustme
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "scripts" / "vault_server.sh"


@dataclass
class VaultServer:
    """A running dev-mode server: in memory, unsealed, KV v2 mounted at `secret/`."""

    address: str
    root_token: str
    process: subprocess.Popen[bytes]
    log: Path

    def admin(self) -> hvac.Client:
        return hvac.Client(url=self.address, token=self.root_token)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(server: VaultServer, deadline_seconds: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"vault exited with {server.process.returncode}:\n{server.log.read_text()}")
        try:
            if requests.get(f"{server.address}/v1/sys/health", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    server.stop()
    pytest.fail(f"vault did not become ready:\n{server.log.read_text()}")


@pytest.fixture(scope="session")
def vault_bin() -> Path:
    """The server binary, built once by `make vault-server` (a prerequisite of `make test`):
    the build takes minutes, too long to start inside a test's timeout."""
    where = subprocess.run(
        [str(BUILD_SCRIPT), "--path"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if not os.access(where, os.X_OK):
        pytest.fail(
            f"no Vault server at {where}: run `make vault-server` once (it builds one from the Go "
            "module proxy), or point GENMESH_VAULT_BIN at a `vault` or `bao` binary"
        )
    return Path(where)


@pytest.fixture(scope="session")
def start_vault(
    vault_bin: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[], VaultServer]]:
    """Starts dev-mode servers on demand; all are stopped at the end of the session."""
    started: list[VaultServer] = []

    def start() -> VaultServer:
        home = tmp_path_factory.mktemp("vault")
        port = _free_port()
        token = secrets.token_hex(16)
        log = home / "vault.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    str(vault_bin),
                    "server",
                    "-dev",
                    f"-dev-root-token-id={token}",
                    f"-dev-listen-address=127.0.0.1:{port}",
                    "-dev-no-store-token",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={"HOME": str(home), "PATH": "/usr/bin:/bin", "SKIP_SETCAP": "1"},
            )
        server = VaultServer(f"http://127.0.0.1:{port}", token, process, log)
        started.append(server)
        _wait_ready(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def vault(start_vault: Callable[[], VaultServer]) -> VaultServer:
    return start_vault()


@dataclass
class TokenReviewStub:
    """Plays the Kubernetes API server's part in Vault's kubernetes auth: it issues
    service-account JWTs and answers TokenReview for them, as a cluster would."""

    url: str
    ca_pem: str
    reviews: int = 0
    _valid: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    _key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )

    def issue(self, namespace: str, account: str, *, valid: bool = True) -> str:
        """A projected service-account token; with `valid=False`, one the cluster disowns."""
        uid = str(uuid.uuid4())
        claims = {
            "iss": "https://kubernetes.default.svc.cluster.local",
            "aud": ["https://kubernetes.default.svc.cluster.local"],
            "sub": f"system:serviceaccount:{namespace}:{account}",
            "iat": int(time.time()) - 60,
            "nbf": int(time.time()) - 60,
            "exp": int(time.time()) + 3600,
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": account, "uid": uid},
            },
        }
        token = jwt.encode(claims, self._key, algorithm="RS256")
        if valid:
            self._valid[token] = (namespace, account, uid)
        return token

    def review(self, request: dict[str, object]) -> dict[str, object]:
        self.reviews += 1
        spec = request.get("spec")
        token = spec.get("token") if isinstance(spec, dict) else None
        identity = self._valid.get(token) if isinstance(token, str) else None
        status: dict[str, object] = {"authenticated": False}
        if identity is not None and isinstance(spec, dict):
            namespace, account, uid = identity
            status = {
                "authenticated": True,
                "user": {"username": f"system:serviceaccount:{namespace}:{account}", "uid": uid},
                "audiences": spec.get("audiences") or [],
            }
        return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status}


@pytest.fixture(scope="session")
def token_review() -> Iterator[TokenReviewStub]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    stub: TokenReviewStub

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != "/apis/authentication.k8s.io/v1/tokenreviews":
                self.send_error(404)
                return
            length = int(self.headers.get("Content-Length", "0"))
            body = json.dumps(stub.review(json.loads(self.rfile.read(length)))).encode()
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the test asserts on what the stub saw, not on its access log."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    stub = TokenReviewStub(
        url=f"https://127.0.0.1:{server.server_address[1]}", ca_pem=ca.cert_pem.bytes().decode()
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield stub
    server.shutdown()
    server.server_close()
