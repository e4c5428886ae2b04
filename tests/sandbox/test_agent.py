"""The router's AgentService in front of a real sandbox service: client calls relayed to the
client, server-side functions answered by the router, Execute for server-only programs."""

from __future__ import annotations

import asyncio
import json
import sys
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from genmesh.client import error_details
from genmesh.router.agent import AgentService, ServerFunctions, mesh_functions
from genmesh.runtime.auth import KeyStore, digest
from genmesh.runtime.channel import key_interceptors
from genmesh.runtime.server import server_interceptors
from genmesh.runtime.settings import ApiKey
from genmesh.runtime.values import py_from_value, value_from_py
from genmesh.v1 import agent_pb2, agent_pb2_grpc, common_pb2, program_pb2
from tests.sandbox.conftest import KEY

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def echo_generate(request: common_pb2.GenerateRequest) -> common_pb2.GenerateResponse:
    """A deterministic text backend: echoes the prompt upper-cased."""
    text = request.inputs[-1].text.upper()
    return common_pb2.GenerateResponse(
        outputs=[common_pb2.OutputItem(kind=common_pb2.CONTENT_KIND_TEXT, text=text)]
    )


async def add(a: int, b: int = 1) -> int:
    """Adds two numbers on the server."""
    await asyncio.sleep(0.05)
    return a + b


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def agent_address(channel: grpc.aio.Channel) -> AsyncIterator[str]:
    """A router-side AgentService (with the real interceptors) over the sandbox service."""
    keys = KeyStore([ApiKey(name="test", sha256=digest(KEY))])
    server = grpc.aio.server(interceptors=server_interceptors(keys))
    functions = ServerFunctions({**mesh_functions(echo_generate), "add": add})
    agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentService(channel, functions), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def agent(agent_address: str) -> AsyncIterator[agent_pb2_grpc.AgentServiceStub]:
    interceptors = key_interceptors(KEY)
    async with grpc.aio.insecure_channel(agent_address, interceptors=interceptors) as client:
        yield agent_pb2_grpc.AgentServiceStub(client)


async def test_execute_calls_server_side_functions(agent: Any) -> None:
    program = program_pb2.Program(
        code="sums = [add(i, b=10) for i in range(4)]\n[generate_text('hi'), sum(sums)]"
    )
    reply = await agent.Execute(agent_pb2.ExecuteRequest(request_id="r1", program=program))
    assert reply.request_id == "r1"
    assert py_from_value(reply.result.value) == ["HI", 46]
    names = [c.call.name for c in reply.result.call_log.calls]
    assert names == ["add"] * 4 + ["generate_text"]


async def test_execute_refuses_a_request_id_metadata_cannot_carry(agent: Any) -> None:
    program = program_pb2.Program(code="1")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await agent.Execute(
            agent_pb2.ExecuteRequest(request_id="r\u00e9sum\u00e9", program=program)
        )
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id" in details.violations
    reply = await agent.Execute(agent_pb2.ExecuteRequest(request_id="plain", program=program))
    assert reply.request_id == "plain"


async def test_execute_refuses_client_functions(agent: Any) -> None:
    program = program_pb2.Program(code="f()", client_functions="def f(): ...")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await agent.Execute(agent_pb2.ExecuteRequest(program=program))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_run_relays_client_functions_to_the_client(agent: Any) -> None:
    program = program_pb2.Program(
        code="a = lookup('x')\nb = add(2)\nprint(a.name)\n[a.name, b]",
        client_functions="def lookup(key=None): ...",
    )
    requests: asyncio.Queue[agent_pb2.RunRequest] = asyncio.Queue()
    await requests.put(agent_pb2.RunRequest(start=agent_pb2.RunStart(program=program)))

    async def feed() -> AsyncIterator[agent_pb2.RunRequest]:
        while True:
            yield await requests.get()

    seen: list[str] = []
    result = None
    async for response in agent.Run(feed()):
        kind = response.WhichOneof("message")
        if kind == "call":
            seen.append(response.call.source)
            value = value_from_py({"name": f"found {response.call.arguments['key']}"})
            answer = program_pb2.FunctionResult(call_id=response.call.call_id, value=value)
            await requests.put(agent_pb2.RunRequest(result=answer))
        elif kind == "log":
            seen.append(f"log: {response.log.text}")
        else:
            result = response.result
            break
    assert result is not None
    assert py_from_value(result.value) == ["found x", 3]
    assert seen == ["lookup(key='x')", "log: found x"]


async def test_results_for_calls_not_relayed_to_the_client_are_dropped(agent: Any) -> None:
    """A client answers only the calls relayed to it, once each: results sent ahead of any call
    neither overtake the run's start (the sandbox refuses a stream that does not begin with it)
    nor answer a server function's call or a call not made yet."""
    program = program_pb2.Program(
        code="[add(2), lookup('x').name]",
        client_functions="def lookup(key=None): ...\n" * 2000,
    )
    requests: asyncio.Queue[agent_pb2.RunRequest] = asyncio.Queue()
    requests.put_nowait(agent_pb2.RunRequest(start=agent_pb2.RunStart(program=program)))
    for call_id in (1, 2, 3) * 10:
        early = program_pb2.FunctionResult(call_id=call_id, value=value_from_py({"name": "early"}))
        requests.put_nowait(agent_pb2.RunRequest(result=early))

    async def feed() -> AsyncIterator[agent_pb2.RunRequest]:
        while True:
            yield await requests.get()

    async for response in agent.Run(feed()):
        if response.WhichOneof("message") == "call":
            # `add` (call 1) is still running in the router: a result for it from the client
            # would reach the sandbox first
            smuggled = program_pb2.FunctionResult(call_id=1, value=value_from_py("smuggled"))
            await requests.put(agent_pb2.RunRequest(result=smuggled))
            answer = program_pb2.FunctionResult(
                call_id=response.call.call_id, value=value_from_py({"name": "answered"})
            )
            await requests.put(agent_pb2.RunRequest(result=answer))
            await requests.put(agent_pb2.RunRequest(result=answer))  # a second answer is dropped
        elif response.WhichOneof("message") == "result":
            assert not response.result.HasField("error"), response.result.error
            assert py_from_value(response.result.value) == [3, "answered"]
            return
    raise AssertionError("the run ended without a result")


PROGRAM = """
people = [find_person(name) for name in ["ada", "alan", "grace"]]
print("found", len(people))
{p.name: p.born for p in people}
"""

HOST = """
import time


def find_person(name):
    time.sleep(0.1)
    return {"name": name.title(), "born": {"ada": 1815, "alan": 1912, "grace": 1906}[name]}
"""


async def genmesh(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "genmesh", *args, stdout=PIPE, stderr=PIPE
    )
    out, err = await process.communicate()
    return process.returncode or 0, out.decode(), err.decode()


async def test_cli_agent_run_and_replay(agent_address: str, tmp_path: Path) -> None:
    (tmp_path / "program.py").write_text(PROGRAM)
    (tmp_path / "host.py").write_text(HOST)
    common = ["--address", agent_address, "--api-key", KEY]
    code, out, err = await genmesh(
        "agent",
        "run",
        *common,
        str(tmp_path / "program.py"),
        "--host-functions",
        str(tmp_path / "host.py"),
        "--json",
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["result"] == {"Ada": 1815, "Alan": 1912, "Grace": 1906}
    assert report["error"] is None
    calls = report["calls"]
    assert [c["source"] for c in calls] == [
        "find_person(name='ada')",
        "find_person(name='alan')",
        "find_person(name='grace')",
    ]
    assert all(c["started_ms"] < calls[0]["ended_ms"] for c in calls)

    plain_code, plain_out, _ = await genmesh(
        "agent",
        "run",
        *common,
        str(tmp_path / "program.py"),
        "--host-functions",
        str(tmp_path / "host.py"),
    )
    assert plain_code == 0
    assert plain_out.splitlines()[0] == "found 3"

    (tmp_path / "log.json").write_text(out)
    code, out, err = await genmesh("sandbox", "replay", str(tmp_path / "log.json"))
    assert code == 0, err
    assert "replay matches the log" in err
    assert json.loads(out[out.index("{") :]) == report["result"]


async def test_cli_reports_program_errors(agent_address: str, tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text("x = 1\nimport os\n")
    code, _, err = await genmesh(
        "agent", "run", "--address", agent_address, "--api-key", KEY, str(tmp_path / "bad.py")
    )
    assert code == 1
    assert "violation" in err
    assert "(line 2)" in err
