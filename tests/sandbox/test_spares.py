"""Spare children: one that warmed up before its program came runs it as a cold one does, spares
warm up only while runs are sparse, and runs beyond the spares get children of their own."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

from genmesh.sandbox import wire
from genmesh.sandbox.executor import REFILL_DELAY, SPARES, Executor, Zygote
from genmesh.v1 import program_pb2
from tests.sandbox.conftest import PythonHost, run_result, sleep_echo

# What the zygote holds when it forks: its module, the child runtime's template, the jail.
ZYGOTE_IMPORTS = """
import sys
from genmesh.sandbox import child, jail, zygote
child.Template()
print(*sys.modules)
"""

# What a warm-up would change if it ran code or touched the run's state: the first host call's id
# and line, the seeded generator, the decimal context, the module views.
SOURCE = """
found = lookup("a", limit=3)
[found.size, random.random(), decimal.getcontext().prec, json.loads('[1]'), math.pi]
"""
START = {
    "t": "start",
    "source": {
        "code": SOURCE,
        "library": "",
        "client_functions": "def lookup(query, limit=1): ...\n",
    },
    "ordered": [],
    "globals": {},
    "limits": {"max_calls": 10, "max_output_bytes": 1 << 16, "max_output_lines": 100},
}


async def messages(zygote: Zygote, *, warm: bool) -> list[dict[str, Any]]:
    """Every message a child of `zygote` sends for SOURCE, its host call answered."""
    child = await zygote.spawn()
    try:
        reader, writer = await child.connect()
        if warm:
            child.warm_up()
        writer.write(wire.encode(START))
        sent: list[dict[str, Any]] = []
        while not sent or sent[-1]["t"] != "done":
            header = await reader.readexactly(wire.HEADER.size)
            sent.append(wire.decode(await reader.readexactly(wire.size(header))))
            if sent[-1]["t"] == "call":
                answer = {"t": "result", "id": sent[-1]["id"], "value": {"size": 7}}
                writer.write(wire.encode(answer))
        return sent
    finally:
        child.close()


async def test_a_warm_child_runs_its_program_as_a_cold_one(executor: Executor) -> None:
    warm = await messages(executor.zygote, warm=True)
    cold = await messages(executor.zygote, warm=False)
    assert warm == cold
    call, done = warm
    assert (call["id"], call["line"], call["args"]) == (1, 2, {"query": "a", "limit": 3})
    assert done["value"][0] == 7, done


async def asked_to_warm_up(executor: Executor) -> list[bool]:
    """Whether each spare of `executor`, once connected, was asked to warm up."""
    return [(await spare).warm for spare in list(executor._spares)]


async def test_spares_warm_up_only_while_runs_are_sparse() -> None:
    """Warming up costs a spare more CPU than it saves its run: runs under way, or coming close
    together, would pay for it."""
    executor = Executor()
    await executor.start()
    try:
        assert await asked_to_warm_up(executor) == [True] * SPARES
        release = asyncio.Event()

        async def hold() -> int:
            await release.wait()
            return 1

        program = program_pb2.Program(code="hold()", client_functions="def hold(): ...\n")
        runs = [asyncio.create_task(executor.run(program, PythonHost(hold=hold))) for _ in "ab"]
        await asyncio.sleep(0.5)  # both runs are under way, one on a spare forked for it
        assert await asked_to_warm_up(executor) == [False] * (SPARES - 1)
        release.set()
        assert [run_result(result) for result in await asyncio.gather(*runs)] == [1, 1]
        await asyncio.sleep(REFILL_DELAY + 0.2)
        assert await asked_to_warm_up(executor) == [False] * SPARES  # they started together
        assert run_result(await executor.run(program_pb2.Program(code="1"), PythonHost())) == 1
        await asyncio.sleep(REFILL_DELAY + 0.2)
        assert await asked_to_warm_up(executor) == [True] * SPARES
    finally:
        await executor.stop()


async def test_runs_beyond_the_spares_get_children_of_their_own(executor: Executor) -> None:
    program = program_pb2.Program(
        code="wait(0.2, n=1)", client_functions="def wait(seconds=0.1, n=0): ...\n"
    )
    host = PythonHost(wait=sleep_echo)
    results = await asyncio.gather(*(executor.run(program, host) for _ in range(SPARES + 2)))
    assert [run_result(result) for result in results] == [{"n": 1}] * (SPARES + 2)


def test_the_zygote_forks_children_without_protobuf() -> None:
    """Every run forks the zygote and tears the child down: what the zygote imports is paid for
    on every run, and protobuf (5 MB) is needed only on the service's side of the wire."""
    imported = subprocess.run(
        [sys.executable, "-s", "-P", "-c", ZYGOTE_IMPORTS],
        capture_output=True,
        text=True,
        check=True,
        env={},
    ).stdout.split()
    assert imported and not [name for name in imported if name.startswith("google.protobuf")]
