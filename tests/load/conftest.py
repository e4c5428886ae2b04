"""An echo ttt service sized for load (every stream gets a slot) and a router in front."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import ServiceProcess, echo_binding, router_config

LOAD_TTT = {"models": [{"name": "echo", "engine": "echo", "concurrency": 512, "queue_size": 512}]}


@pytest.fixture(scope="module")
def load_mesh() -> Iterator[ServiceProcess]:
    ttt = ServiceProcess("ttt", LOAD_TTT)
    router = ServiceProcess("router", router_config([echo_binding(ttt.address)]))
    yield router
    router.terminate()
    ttt.terminate()
