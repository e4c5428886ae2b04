"""Each image run as the chart runs it (see conftest): it becomes ready, answers a request of its
own kind through the router, and drains on SIGTERM with exit code 0 within the chart's grace
period. The router image runs in every case."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.images import checks
from tests.images.conftest import StartPod

# The image under test, with the images it needs to answer, and the request it must answer.
CASES: dict[str, tuple[list[str], checks.Check]] = {
    "ttt": (["router", "ttt"], checks.text),
    "tti": (["router", "tti"], checks.image),
    "audio": (["router", "audio"], checks.speech),
    "sandbox": (["router", "sandbox"], checks.agent),
    "gateway": (["router", "ttt", "gateway"], checks.rest),
    "edge": (["router", "ttt", "edge"], checks.openai_chat),
}


@pytest.mark.parametrize("service", sorted(CASES))
def test_image_serves_and_drains(service: str, mesh_pod: StartPod, tmp_path: Path) -> None:
    services, check = CASES[service]
    pod = mesh_pod(services)
    for name in services:
        pod.wait_ready(name)
    pod.wait_routed()
    check(pod, tmp_path)
    # Front to back, as a rollout would: each drains with nothing in flight and exits cleanly.
    for name in reversed(services):
        assert pod.terminate(name) == 0, pod.containers[name].logs()
