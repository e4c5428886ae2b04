"""Fixtures for the chart checks: the pinned tools and the chart rendered with each value set.

The tools (helm, kube-score, readme-generator) are built by scripts/helm_tools.sh into the cache;
a warm run only checks that they are there.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "genmesh"
# The oldest Kubernetes release the chart supports (Chart.yaml kubeVersion); schemas are checked
# against it, so fields newer than it cannot slip in.
KUBE_VERSION = "1.27.0"
# Value sets: the defaults plus every ci/<name>-values.yaml (helm's chart-testing convention).
VALUE_SETS: dict[str, Path | None] = {
    "defaults": None,
    **{
        p.name.removesuffix("-values.yaml"): p for p in sorted((CHART / "ci").glob("*-values.yaml"))
    },
}
PYTHON_SERVICES = ("router", "ttt", "tti", "audio", "sandbox")
SERVICES = (*PYTHON_SERVICES, "gateway")

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Tools:
    helm: Path
    kube_score: Path
    readme_generator: Path


@pytest.fixture(scope="session")
def tools() -> Tools:
    cache = Path(os.environ.get("GENMESH_CACHE", Path.home() / ".cache" / "genmesh"))
    bin_dir = cache / "bin"
    subprocess.run([str(ROOT / "scripts" / "helm_tools.sh"), str(bin_dir)], check=True)
    return Tools(bin_dir / "helm", bin_dir / "kube-score", bin_dir / "readme-generator")


def helm_args(values: Path | None, *extra: str) -> list[str]:
    files = ["-f", str(values)] if values else []
    return [str(CHART), "--kube-version", KUBE_VERSION, *files, *extra]


def run(cmd: list[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Runs a tool without a cluster or a home directory of ours to read."""
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/helm-cache", "HELM_CONFIG_HOME": "/tmp/helm"}
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, env=env, check=False, **kwargs
    )


def template(tools: Tools, values: Path | None, *extra: str) -> subprocess.CompletedProcess[str]:
    return run([tools.helm, "template", "genmesh", *helm_args(values, "--namespace", "ai", *extra)])


class Rendered:
    """The manifests of one value set, with lookups tests need."""

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.text = text
        self.manifests: list[Manifest] = [d for d in yaml.safe_load_all(text) if d]

    def of_kind(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] == kind]

    def get(self, kind: str, name: str) -> Manifest:
        matches = [m for m in self.of_kind(kind) if m["metadata"]["name"] == name]
        assert len(matches) == 1, f"{self.name}: expected one {kind} {name}"
        return matches[0]

    def component(self, manifest: Manifest) -> str:
        return str(manifest["metadata"]["labels"]["app.kubernetes.io/component"])

    def deployments(self) -> dict[str, Manifest]:
        return {self.component(d): d for d in self.of_kind("Deployment")}

    def config(self, service: str) -> dict[str, Any]:
        """The service's section of its generated mesh config file."""
        data = self.get("ConfigMap", f"genmesh-{service}")["data"]["config.yaml"]
        section: dict[str, Any] = yaml.safe_load(data)[service]
        return section

    def values(self) -> dict[str, Any]:
        defaults: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
        path = VALUE_SETS[self.name]
        return merge(defaults, yaml.safe_load(path.read_text()) if path else {})


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's value merge: maps merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture(scope="session")
def rendered_sets(tools: Tools) -> dict[str, Rendered]:
    out: dict[str, Rendered] = {}
    for name, values in VALUE_SETS.items():
        result = template(tools, values)
        assert result.returncode == 0, f"helm template ({name}) failed:\n{result.stderr}"
        out[name] = Rendered(name, result.stdout)
    return out


@pytest.fixture(params=sorted(VALUE_SETS))
def rendered(request: pytest.FixtureRequest, rendered_sets: dict[str, Rendered]) -> Rendered:
    return rendered_sets[request.param]


def pod_specs(rendered: Rendered) -> Iterator[tuple[str, Manifest]]:
    """Every pod the chart creates: the Deployments' templates and the `helm test` pod."""
    for component, deployment in rendered.deployments().items():
        yield component, deployment["spec"]["template"]["spec"]
    for pod in rendered.of_kind("Pod"):
        yield rendered.component(pod), pod["spec"]
