"""The jailed child running a program is killed from outside: that run fails with a structured
error, and the next run gets a fresh child."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import psutil
import pytest

from genmesh.runtime.values import py_from_value
from genmesh.v1 import agent_pb2, agent_pb2_grpc, program_pb2
from tests.faults.conftest import KEY
from tests.support import ServiceProcess, echo_binding, router_config

BUSY = "total = 0\nfor i in range(10 ** 10):\n    total += i\ntotal"


@pytest.fixture
def agent_mesh(ttt: ServiceProcess) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    sandbox = ServiceProcess("sandbox", {})
    router = ServiceProcess(
        "router", router_config([echo_binding(ttt.address)], sandbox_address=sandbox.address)
    )
    yield sandbox, router
    router.terminate()
    sandbox.terminate()


def cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def busy_child(sandbox: ServiceProcess, timeout: float = 30) -> psutil.Process:
    """The sandbox's leaf process whose CPU time grows: the child running the program."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leaves = [
            p
            for p in psutil.Process(sandbox.popen.pid).children(recursive=True)
            if not p.children()
        ]
        before = {p.pid: cpu(p) for p in leaves}
        time.sleep(0.5)
        grown = {p.pid: cpu(p) - before[p.pid] for p in leaves if p.is_running()}
        busiest = max(grown, key=lambda pid: grown[pid], default=None)
        if busiest is not None and grown[busiest] > 0.05:
            return psutil.Process(busiest)
    raise AssertionError("no sandbox child is running the program")


async def test_killed_child_fails_its_run_only(
    agent_mesh: tuple[ServiceProcess, ServiceProcess],
) -> None:
    sandbox, router = agent_mesh
    async with grpc.aio.insecure_channel(router.address) as channel:
        agent = agent_pb2_grpc.AgentServiceStub(channel)

        def execute(code: str) -> asyncio.Future[agent_pb2.ExecuteResponse]:
            request = agent_pb2.ExecuteRequest(program=program_pb2.Program(code=code))
            return asyncio.ensure_future(agent.Execute(request, metadata=KEY, timeout=60))

        running = execute(BUSY)
        child = await asyncio.to_thread(busy_child, sandbox)
        child.kill()
        result = (await running).result
        assert result.error.kind in (
            program_pb2.ProgramError.KIND_MEMORY,
            program_pb2.ProgramError.KIND_CRASHED,
        ), result.error
        assert sandbox.popen.poll() is None

        again = (await execute("21 * 2")).result
        assert not again.HasField("error"), again.error
        assert py_from_value(again.value) == 42
