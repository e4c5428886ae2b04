"""Fixtures of the chart's install tests: a control plane per test module, helm pointed at it, and
a fresh namespace per test that enforces the restricted Pod Security Standard."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.chart.conftest import CHART, ROOT, VALUE_SETS
from tests.kube.cluster import Cluster, Manifest, control_plane, tool_dir

RELEASE = "genmesh"


@dataclass(frozen=True)
class Helm:
    """helm with the cluster's kubeconfig and homes of its own."""

    binary: Path
    cluster: Cluster
    home: Path

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(self.home),
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        return subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, env=env, check=False
        )

    def chart(
        self, command: str, namespace: str, value_set: str, *extra: str, release: str = RELEASE
    ) -> str:
        """`helm install` or `upgrade` of the chart with a value set; returns helm's output
        (the release notes) after checking it succeeded without a warning from the server."""
        path = VALUE_SETS[value_set]
        values = ["-f", str(path)] if path else []
        result = self(command, release, str(CHART), "-n", namespace, *values, *extra)
        assert result.returncode == 0, result.stdout + result.stderr
        # client-go prints the server's Warning headers (PodSecurity, unknown fields) on stderr.
        assert result.stderr == "", result.stderr
        return result.stdout

    def manifests(self, namespace: str, release: str = RELEASE) -> list[Manifest]:
        """What the release's current revision applied."""
        result = self("get", "manifest", release, "-n", namespace)
        assert result.returncode == 0, result.stderr
        return [m for m in yaml.safe_load_all(result.stdout) if m]


@pytest.fixture(scope="session")
def tools() -> Path:
    """helm (built here if missing, a minute or two) and the control plane's binaries, which
    `make kube-tools` builds: about 17 minutes cold, too long for a test's timeout."""
    bin_dir = tool_dir()
    subprocess.run([str(ROOT / "scripts" / "helm_tools.sh"), str(bin_dir)], check=True)
    missing = [n for n in ("kube-apiserver", "etcd") if not os.access(bin_dir / n, os.X_OK)]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not in {bin_dir}: run `make kube-tools` once (it builds "
            "kube-apiserver from the Go module proxy and installs Debian's etcd-server)"
        )
    return bin_dir


@pytest.fixture(scope="module")
def cluster(tools: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with control_plane(tmp_path_factory.mktemp("kube")) as running:
        yield running


@pytest.fixture(scope="module")
def helm(tools: Path, cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(tools / "helm", cluster, tmp_path_factory.mktemp("helm-home"))


def restricted_namespace(cluster: Cluster, name: str) -> str:
    """Creates a namespace where pods must meet the restricted Pod Security Standard, and any
    workload that would not is reported (a Warning header) when it is created."""
    levels = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn")}
    cluster.create(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": levels}}
    )
    return name


@pytest.fixture
def namespace(cluster: Cluster) -> str:
    return restricted_namespace(cluster, f"genmesh-{secrets.token_hex(4)}")
