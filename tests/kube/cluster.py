"""A Kubernetes control plane on loopback: etcd and a real kube-apiserver (scripts/kube_tools.sh
builds it), with a self-made CA and serving certificate, a service-account signing key, and a
static token in the system:masters group for helm's kubeconfig.

No controller manager, scheduler or kubelet runs: the server admits, validates, defaults and
stores objects (admission plugins included), but nothing reconciles them, so Deployments never
get pods and objects with finalizers wait for controllers that are not there.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import trustme
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

STARTUP_TIMEOUT_S = 120.0
Manifest = dict[str, Any]


def tool_dir() -> Path:
    return Path(os.environ.get("GENMESH_CACHE", Path.home() / ".cache" / "genmesh")) / "bin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running(name: str, command: list[str], workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A server process logging to workdir/<name>.log, stopped (and reaped) on exit."""
    with (workdir / f"{name}.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_ok(
    process: subprocess.Popen[bytes], log: Path, probe: Callable[[], bool], what: str
) -> None:
    """Polls `probe()` until it is true, failing early if the process dies."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log.read_text()}")
        try:
            if probe():
                return
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.2)
    raise RuntimeError(f"{what} was not ready in {STARTUP_TIMEOUT_S:.0f} s ({last}); see {log}")


@dataclass
class Cluster:
    """The API server as helm and the tests see it."""

    url: str
    kubeconfig: Path
    session: requests.Session
    # (apiVersion, kind) -> (resource name, namespaced), from the server's discovery documents.
    _resources: dict[tuple[str, str], tuple[str, bool]] = field(default_factory=dict)

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, self.url + path, timeout=30, **kwargs)

    def path(self, api_version: str, kind: str, namespace: str, name: str = "") -> str:
        """The REST path of an object (or of its collection when name is empty)."""
        if (api_version, kind) not in self._resources:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            reply = self.request("GET", base)
            reply.raise_for_status()
            for resource in reply.json()["resources"]:
                if "/" not in resource["name"]:
                    key = (api_version, resource["kind"])
                    self._resources[key] = (resource["name"], resource["namespaced"])
        resource, namespaced = self._resources[(api_version, kind)]
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        scope = f"/namespaces/{namespace}" if namespaced else ""
        return f"{base}{scope}/{resource}" + (f"/{name}" if name else "")

    def get(self, manifest: Manifest, namespace: str) -> Manifest | None:
        """The server's copy of a manifest's object, or None when it does not exist."""
        path = self.path(
            manifest["apiVersion"], manifest["kind"], namespace, manifest["metadata"]["name"]
        )
        reply = self.request("GET", path)
        if reply.status_code == 404:
            return None
        reply.raise_for_status()
        stored: Manifest = reply.json()
        return stored

    def create(self, manifest: Manifest, namespace: str = "") -> Manifest:
        path = self.path(manifest["apiVersion"], manifest["kind"], namespace)
        reply = self.request("POST", path, json=manifest)
        assert reply.status_code == 201, reply.text
        created: Manifest = reply.json()
        return created

    def strict_dry_run_apply(self, manifest: Manifest, namespace: str) -> str:
        """Server-side apply of the manifest with every check and nothing stored; fails on a
        refusal (an unknown or duplicate field included) and returns the server's warnings."""
        path = self.path(
            manifest["apiVersion"], manifest["kind"], namespace, manifest["metadata"]["name"]
        )
        reply = self.request(
            "PATCH",
            path,
            params={
                "dryRun": "All",
                "fieldValidation": "Strict",
                "fieldManager": "genmesh-tests",
                "force": "true",
            },
            data=yaml.safe_dump(manifest),
            headers={"Content-Type": "application/apply-patch+yaml"},
        )
        assert reply.ok, f"{manifest['kind']} {manifest['metadata']['name']}: {reply.text}"
        return reply.headers.get("Warning", "")

    def wait_for_kind(self, api_version: str, kind: str) -> None:
        """Waits until discovery serves a kind (a new CRD takes a moment to be established)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            reply = self.request("GET", f"/apis/{api_version}")
            if reply.ok and any(r["kind"] == kind for r in reply.json()["resources"]):
                return
            time.sleep(0.2)
        raise TimeoutError(f"{api_version} {kind} was never served")


def _write_certificates(workdir: Path) -> dict[str, Path]:
    ca = trustme.CA()
    serving = ca.issue_cert("127.0.0.1", "localhost", "kubernetes.default.svc")
    files = {
        "ca": workdir / "ca.crt",
        "cert": workdir / "apiserver.crt",
        "key": workdir / "apiserver.key",
        "sa-key": workdir / "sa.key",
        "sa-pub": workdir / "sa.pub",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    serving.cert_chain_pems[0].write_to_path(str(files["cert"]))
    serving.private_key_pem.write_to_path(str(files["key"]))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files["sa-key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files["sa-pub"].write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return files


def _etcd_command(workdir: Path, client_port: int) -> list[str]:
    peer = f"http://127.0.0.1:{free_port()}"
    client = f"http://127.0.0.1:{client_port}"
    return [
        str(tool_dir() / "etcd"),
        "--name=genmesh-test",
        f"--data-dir={workdir / 'etcd'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=genmesh-test={peer}",
    ]


def _apiserver_command(files: dict[str, Path], etcd_port: int, port: int) -> list[str]:
    return [
        str(tool_dir() / "kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={files['ca'].parent / 'certs'}",
        f"--tls-cert-file={files['cert']}",
        f"--tls-private-key-file={files['key']}",
        f"--token-auth-file={files['tokens']}",
        "--authorization-mode=RBAC",
        "--service-account-issuer=https://kubernetes.default.svc",
        f"--service-account-key-file={files['sa-pub']}",
        f"--service-account-signing-key-file={files['sa-key']}",
        "--service-cluster-ip-range=10.96.0.0/16",
        # Its loopback address may not be the `kubernetes` Service's endpoint; no one dials it.
        "--endpoint-reconciler-type=none",
        "--profiling=false",
    ]


@contextmanager
def control_plane(workdir: Path) -> Iterator[Cluster]:
    """etcd and kube-apiserver on free loopback ports, ready to serve; both stop on exit."""
    files = _write_certificates(workdir)
    token = secrets.token_hex(24)
    files["tokens"] = workdir / "tokens.csv"
    files["tokens"].write_text(f'{token},genmesh-admin,genmesh-admin,"system:masters"\n')
    etcd_port, port = free_port(), free_port()
    url = f"https://127.0.0.1:{port}"
    session = requests.Session()
    # Loopback only: no proxy or CA bundle from the environment (which would override `verify`).
    session.trust_env = False
    session.headers["Authorization"] = f"Bearer {token}"
    session.verify = str(files["ca"])
    with ExitStack() as stack:
        etcd = stack.enter_context(running("etcd", _etcd_command(workdir, etcd_port), workdir))
        wait_until_ok(
            etcd,
            workdir / "etcd.log",
            lambda: session.get(f"http://127.0.0.1:{etcd_port}/health", timeout=2).ok,
            "etcd",
        )
        apiserver = stack.enter_context(
            running("kube-apiserver", _apiserver_command(files, etcd_port, port), workdir)
        )
        wait_until_ok(
            apiserver,
            workdir / "kube-apiserver.log",
            lambda: session.get(f"{url}/readyz", timeout=2).ok,
            "kube-apiserver",
        )
        kubeconfig = workdir / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "genmesh-test",
                            "cluster": {
                                "server": url,
                                "certificate-authority": str(files["ca"]),
                            },
                        }
                    ],
                    "users": [{"name": "admin", "user": {"token": token}}],
                    "contexts": [
                        {
                            "name": "genmesh-test",
                            "context": {"cluster": "genmesh-test", "user": "admin"},
                        }
                    ],
                    "current-context": "genmesh-test",
                }
            )
        )
        kubeconfig.chmod(0o600)
        yield Cluster(url, kubeconfig, session)
