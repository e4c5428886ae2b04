"""Runs the built images the way the chart runs them, with podman and no cluster.

The chart is rendered with `helm template`; each Deployment's container becomes a podman container
with the same image, arguments, environment (Secret references resolved from the rendered Secret),
ConfigMap files, /tmp emptyDir (a tmpfs), user, capabilities, privilege escalation setting,
seccomp profile and read-only root filesystem. The containers of one test share a pod, which
stands in for the cluster network: every Service name of the release resolves to the pod, where
each service listens on its own chart port, so the services find each other by the names the
chart gives them. `make images` builds the images first; a missing image fails the tests.
"""

from __future__ import annotations

import base64
import os
import secrets
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genmesh.client import SyncClient
from tests.chart import conftest as chart
from tests.chart.conftest import ROOT, Manifest, Rendered, Tools

PODMAN_ENV = {**os.environ, "CONTAINERS_CONF": str(ROOT / "images" / "containers.conf")}
NAMESPACE = "ai"
# Loading torch or a whisper model on a loaded 2-core machine takes a while.
READY_TIMEOUT_S = 300.0

tools = chart.tools


def podman(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args],
        env=PODMAN_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def checked(*args: str, timeout: float = 300) -> str:
    result = podman(*args, timeout=timeout)
    assert result.returncode == 0, f"podman {' '.join(args)}:\n{result.stderr}"
    return result.stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def release(tools: Tools) -> Rendered:
    result = chart.template(tools, None)
    assert result.returncode == 0, result.stderr
    return Rendered("defaults", result.stdout)


class Container:
    """One chart container of a pod: its podman options, ports and probes."""

    def __init__(self, pod: MeshPod, service: str, deployment: Manifest) -> None:
        self.service = service
        self.name = f"{pod.name}-{service}"
        self.spec: Manifest = deployment["spec"]["template"]["spec"]
        (self.container,) = self.spec["containers"]
        (port,) = [p for p in self.container["ports"] if p["name"] in ("grpc", "http")]
        self.port: int = port["containerPort"]
        self.host_port = free_port()
        self.grace: int = self.spec["terminationGracePeriodSeconds"]
        self.options = self._options(pod)

    def _options(self, pod: MeshPod) -> list[str]:
        pod_context = self.spec.get("securityContext", {})
        context = {**pod_context, **self.container.get("securityContext", {})}
        options = [f"--user={context['runAsUser']}:{context['runAsGroup']}"]
        if context.get("readOnlyRootFilesystem"):
            # Kubernetes adds no writable tmpfs of its own; /tmp is the chart's emptyDir.
            options += ["--read-only", "--read-only-tmpfs=false"]
        if not context.get("allowPrivilegeEscalation", True):
            options.append("--security-opt=no-new-privileges")
        if context.get("privileged"):
            options.append("--privileged")
        capabilities = context.get("capabilities", {})
        options += [f"--cap-drop={c.lower()}" for c in capabilities.get("drop", [])]
        options += [f"--cap-add={c.lower()}" for c in capabilities.get("add", [])]
        seccomp = context.get("seccompProfile", {}).get("type", "RuntimeDefault")
        if seccomp == "Unconfined":
            options.append("--security-opt=seccomp=unconfined")
        else:
            assert seccomp == "RuntimeDefault", f"no node-local profiles here: {seccomp}"
        for item in self.container.get("env", []):
            options.append(f"--env={item['name']}={pod.env_value(item)}")
        volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        for mount in self.container.get("volumeMounts", []):
            options.append(pod.volume(self.service, volumes[mount["name"]], mount))
        return options

    def logs(self) -> str:
        result = podman("logs", self.name)
        return result.stdout + result.stderr


class MeshPod:
    """Chart services in one podman pod; `start` runs them, closing removes the pod."""

    def __init__(self, release: Rendered, services: list[str], workdir: Path) -> None:
        self.release = release
        self.name = f"genmesh-test-{secrets.token_hex(3)}"
        self.workdir = workdir
        deployments = release.deployments()
        self.containers = {s: Container(self, s, deployments[s]) for s in services}

    def env_value(self, item: Manifest) -> str:
        if "value" in item:
            return str(item["value"])
        ref = item["valueFrom"]["secretKeyRef"]
        data = self.release.get("Secret", ref["name"])["data"][ref["key"]]
        return base64.b64decode(data).decode()

    def volume(self, service: str, volume: Manifest, mount: Manifest) -> str:
        path = mount["mountPath"]
        if "emptyDir" in volume:
            return f"--tmpfs={path}:rw,mode=1777"
        config_map = self.release.get("ConfigMap", volume["configMap"]["name"])
        folder = self.workdir / service / volume["name"]
        folder.mkdir(parents=True)
        for file, text in config_map["data"].items():
            (folder / file).write_text(text)
            (folder / file).chmod(0o644)
        folder.chmod(0o755)
        return f"--volume={folder}:{path}:ro"

    def hosts(self) -> list[str]:
        """Every name a Service of the release answers to inside the cluster."""
        names = []
        for service in self.release.of_kind("Service"):
            name = service["metadata"]["name"]
            names += [name, f"{name}.{NAMESPACE}", f"{name}.{NAMESPACE}.svc"]
            names.append(f"{name}.{NAMESPACE}.svc.cluster.local")
        return names

    def start(self) -> None:
        hosts = [f"--add-host={h}:127.0.0.1" for h in self.hosts()]
        ports = [f"--publish=127.0.0.1:{c.host_port}:{c.port}" for c in self.containers.values()]
        checked("pod", "create", f"--name={self.name}", *hosts, *ports)
        for c in self.containers.values():
            image = c.container["image"]
            assert podman("image", "exists", image).returncode == 0, f"{image}: run `make images`"
            checked(
                "run",
                "--detach",
                f"--pod={self.name}",
                f"--name={c.name}",
                *c.options,
                image,
                *c.container.get("args", []),
            )

    def close(self) -> None:
        podman("pod", "rm", "--force", "--time=0", self.name)

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.containers[service].host_port}"

    def url(self, service: str, path: str) -> str:
        return f"http://{self.address(service)}{path}"

    def api_key(self) -> str:
        (item,) = [
            e for e in self.containers["router"].container["env"] if e["name"] == "GENMESH_API_KEY"
        ]
        return self.env_value(item)

    def wait_ready(self, service: str) -> None:
        """Until the chart's readiness probe would pass: gRPC health SERVING, or HTTP 200."""
        c = self.containers[service]
        probe = c.container["readinessProbe"]
        deadline = time.monotonic() + READY_TIMEOUT_S
        last = ""
        while time.monotonic() < deadline:
            state = podman("inspect", "--format={{.State.Status}}", c.name).stdout.strip()
            assert state == "running", f"{service} is {state}:\n{c.logs()}"
            try:
                if "grpc" in probe:
                    if self.serving(service, probe["grpc"]["service"]):
                        return
                elif self._http_ok(self.url(service, probe["httpGet"]["path"])):
                    return
            except (grpc.RpcError, OSError) as error:
                last = str(error)
            time.sleep(1)
        pytest.fail(f"{service} not ready in {READY_TIMEOUT_S}s ({last}):\n{c.logs()}")

    def wait_routed(self) -> None:
        """Until the router sees a healthy replica behind each binding this pod serves: it checks
        its backends on its own schedule, so a backend that is ready may not be routed to yet."""
        names = {
            f"{s['metadata']['name']}."
            for s in self.release.of_kind("Service")
            if self.release.component(s) in self.containers
        }
        wanted = {
            b["name"]
            for b in self.release.config("router")["bindings"]
            if any(n in address for n in names for address in b["addresses"])
        }
        deadline = time.monotonic() + READY_TIMEOUT_S
        with SyncClient(self.address("router"), self.api_key()) as client:
            while time.monotonic() < deadline:
                healthy = {b.name for b in client.list_bindings() if b.healthy_replicas > 0}
                if wanted <= healthy:
                    return
                time.sleep(0.5)
        pytest.fail(f"the router never saw {wanted - healthy} healthy")

    def serving(self, service: str, name: str) -> bool:
        with grpc.insecure_channel(self.address(service)) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=3)
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    @staticmethod
    def _http_ok(url: str) -> bool:
        with urllib.request.urlopen(url, timeout=3) as response:
            return bool(response.status == 200)

    def terminate(self, service: str) -> int:
        """SIGTERM as the kubelet sends it; the exit code, or a failure after the grace period."""
        c = self.containers[service]
        checked("kill", "--signal=TERM", c.name)
        try:
            return int(checked("wait", c.name, timeout=c.grace))
        except subprocess.TimeoutExpired:
            pytest.fail(f"{service} still running {c.grace}s after SIGTERM:\n{c.logs()}")


StartPod = Callable[[list[str]], MeshPod]


@pytest.fixture
def mesh_pod(release: Rendered, tmp_path: Path) -> Iterator[StartPod]:
    """A factory: `mesh_pod([services])` starts them in a pod, removed after the test."""
    pods: list[MeshPod] = []

    def start(services: list[str]) -> MeshPod:
        pod = MeshPod(release, services, tmp_path / f"pod{len(pods)}")
        pods.append(pod)
        pod.start()
        return pod

    yield start
    for pod in pods:
        pod.close()
