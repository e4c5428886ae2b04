"""The whole chart from its images in one pod: every Deployment of the default values, the
services finding each other by their Service names; every modality and an agent run through the
router, and the REST gateway and the OpenAI-compatible edge answering in front of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chart.conftest import Rendered
from tests.images import checks
from tests.images.conftest import MeshPod


@pytest.fixture(scope="module")
def mesh(release: Rendered, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshPod]:
    pod = MeshPod(release, sorted(release.deployments()), tmp_path_factory.mktemp("mesh"))
    try:
        pod.start()
        for service in pod.containers:
            pod.wait_ready(service)
        pod.wait_routed()
        yield pod
    finally:
        pod.close()


@pytest.mark.parametrize(
    "check",
    [checks.text, checks.image, checks.speech, checks.agent, checks.rest, checks.openai_chat],
)
def test_every_modality_and_front_end(mesh: MeshPod, check: checks.Check, tmp_path: Path) -> None:
    check(mesh, tmp_path)
