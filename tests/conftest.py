"""Session fixtures: the services every test folder may share, each started once per run.

An echo ttt service and a router in front of it; a ttt service with the embedded SmolLM2 (and a
one-slot echo model) and its router; the tti service with the embedded model; the audio service.
They live here, not in a folder's conftest, so that the folders using one (ttt and the edge, say)
share its process instead of each starting its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from genmesh.tti.settings import EMBEDDED_MODEL
from tests.support import (
    ServiceProcess,
    client_fixture,
    echo_binding,
    router_config,
    serve,
    until_idle,
)
from tests.tti.conftest import LIMITS
from tests.ttt.conftest import SMOL, binding, smol_model


@pytest.fixture(scope="session")
def ttt() -> Iterator[ServiceProcess]:
    yield from serve("ttt", {})


@pytest.fixture(autouse=True)
def echo_left_idle(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test on a session ttt's echo model (one generation at a time) leaves it idle: work it
    left running fails that test, not the next one, which would wait behind it (or, on
    `smol_ttt`'s echo, which queues none, be refused)."""
    yield
    for name in ("ttt", "smol_ttt"):
        if name in request.fixturenames:
            until_idle(request.getfixturevalue(name), "echo")


@pytest.fixture(scope="session")
def router(ttt: ServiceProcess) -> Iterator[ServiceProcess]:
    yield from serve("router", router_config([echo_binding(ttt.address)]))


client = client_fixture("router")


@pytest.fixture(scope="session")
def smol_ttt() -> Iterator[ServiceProcess]:
    pytest.importorskip("llama_cpp")
    # The echo model admits one generation and queues none: the overload tests fill it.
    echo = {"name": "echo", "engine": "echo", "concurrency": 1, "queue_size": 0}
    yield from serve("ttt", {"models": [smol_model(), echo]})


@pytest.fixture(scope="session")
def smol_router(smol_ttt: ServiceProcess) -> Iterator[ServiceProcess]:
    bindings = [
        {**binding("smollm2", smol_ttt.address, SMOL), "default": True},
        binding("echo-smol", smol_ttt.address, "echo"),
    ]
    yield from serve("router", router_config(bindings))


@pytest.fixture(scope="session")
def tti() -> Iterator[ServiceProcess]:
    model = {"name": EMBEDDED_MODEL, "concurrency": 1, "queue_size": 1}
    yield from serve("tti", {"models": [model], "limits": LIMITS})


@pytest.fixture(scope="session")
def audio() -> Iterator[ServiceProcess]:
    # One synthesis and one recognition at a time, one more waiting: the overload test fills it.
    yield from serve("audio", {"queue_size": 1})
