"""Session fixtures: one echo ttt service and a router in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from genmesh.client import Client
from tests.support import API_KEY, ServiceProcess, echo_binding, router_config


@pytest.fixture(scope="session")
def ttt() -> Iterator[ServiceProcess]:
    process = ServiceProcess("ttt", {})
    yield process
    process.terminate()


@pytest.fixture(scope="session")
def router(ttt: ServiceProcess) -> Iterator[ServiceProcess]:
    process = ServiceProcess("router", router_config([echo_binding(ttt.address)]))
    yield process
    process.terminate()


@pytest.fixture
async def client(router: ServiceProcess) -> AsyncIterator[Client]:
    async with Client(router.address, API_KEY) as connected:
        yield connected
