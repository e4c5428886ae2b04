"""The router's AgentService in front of a real sandbox service: client calls relayed to the
client, server-side functions answered by the router, Execute for server-only programs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio

from genmesh.router.agent import AgentService, ServerFunctions, mesh_functions
from genmesh.runtime.auth import AuthInterceptor, KeyStore, digest
from genmesh.runtime.channel import key_interceptors
from genmesh.runtime.settings import ApiKey
from genmesh.sandbox.executor import py_from_value, value_from_py
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
async def agent(channel: grpc.aio.Channel) -> AsyncIterator[agent_pb2_grpc.AgentServiceStub]:
    keys = KeyStore([ApiKey(name="test", sha256=digest(KEY))])
    server = grpc.aio.server(interceptors=[AuthInterceptor(keys)])
    functions = ServerFunctions({**mesh_functions(echo_generate), "add": add})
    agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentService(channel, functions), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    address = f"127.0.0.1:{port}"
    async with grpc.aio.insecure_channel(address, interceptors=key_interceptors(KEY)) as client:
        yield agent_pb2_grpc.AgentServiceStub(client)
    await server.stop(None)


async def test_execute_calls_server_side_functions(agent: Any) -> None:
    program = program_pb2.Program(
        code="sums = [add(i, b=10) for i in range(4)]\n[generate_text('hi'), sum(sums)]"
    )
    reply = await agent.Execute(agent_pb2.ExecuteRequest(request_id="r1", program=program))
    assert reply.request_id == "r1"
    assert py_from_value(reply.result.value) == ["HI", 46]
    names = [c.call.name for c in reply.result.call_log.calls]
    assert names == ["add"] * 4 + ["generate_text"]


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
