"""SandboxService over real gRPC on loopback: host calls on the stream, logs, failures, health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genmesh.runtime.values import py_from_value, value_from_py
from genmesh.v1 import program_pb2, sandbox_pb2, sandbox_pb2_grpc

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def execute(
    channel: grpc.aio.Channel, program: program_pb2.Program, answer: Any = None
) -> tuple[program_pb2.ProgramResult, list[str]]:
    """Runs `program`, answering each call with `answer(name, **arguments)`."""
    stub = sandbox_pb2_grpc.SandboxServiceStub(channel)
    requests: asyncio.Queue[sandbox_pb2.SandboxServiceExecuteRequest | None] = asyncio.Queue()
    await requests.put(
        sandbox_pb2.SandboxServiceExecuteRequest(start=sandbox_pb2.SandboxStart(program=program))
    )

    async def feed() -> AsyncIterator[sandbox_pb2.SandboxServiceExecuteRequest]:
        while (request := await requests.get()) is not None:
            yield request

    logs: list[str] = []

    async def reply(call: program_pb2.FunctionCall) -> None:
        kwargs = {k: py_from_value(v) for k, v in call.arguments.fields.items()}
        await asyncio.sleep(0.05)
        result = program_pb2.FunctionResult(
            call_id=call.call_id, value=value_from_py(answer(call.name, **kwargs))
        )
        await requests.put(sandbox_pb2.SandboxServiceExecuteRequest(result=result))

    tasks = []
    async for response in stub.Execute(feed()):
        kind = response.WhichOneof("message")
        if kind == "call":
            tasks.append(asyncio.create_task(reply(response.call)))
        elif kind == "log":
            logs.append(response.log.text)
        else:
            await requests.put(None)  # ends the request stream, which the call then closes
            return response.result, logs
    raise AssertionError("the stream ended without a result")


async def test_program_with_host_calls_over_the_stream(channel: grpc.aio.Channel) -> None:
    program = program_pb2.Program(
        code="rs = [lookup(i) for i in range(5)]\nprint('got', len(rs))\nsum(r.double for r in rs)",
        client_functions="def lookup(n=0): ...",
    )
    result, logs = await execute(channel, program, lambda name, n: {"double": 2 * n})
    assert py_from_value(result.value) == 20
    assert logs == ["got 5"]
    starts = [c.started.ToNanoseconds() for c in result.call_log.calls]
    first_end = starts[0] + result.call_log.calls[0].duration.ToNanoseconds()
    assert all(s < first_end for s in starts)


async def test_failures_come_back_structured_and_service_keeps_serving(
    channel: grpc.aio.Channel,
) -> None:
    rejected, _ = await execute(channel, program_pb2.Program(code="x = 1\nimport os"))
    assert rejected.error.kind == program_pb2.ProgramError.KIND_VIOLATION
    assert rejected.error.line == 2
    crashed, _ = await execute(channel, program_pb2.Program(code="1 / 0"))
    assert crashed.error.type == "ZeroDivisionError"
    looping = program_pb2.Program(code="while True:\n    pass")
    looping.limits.wall_time.FromMilliseconds(500)
    timed_out, _ = await execute(channel, looping)
    assert timed_out.error.kind == program_pb2.ProgramError.KIND_TIMEOUT
    ok, _ = await execute(channel, program_pb2.Program(code="'still here'"))
    assert py_from_value(ok.value) == "still here"


async def test_first_message_must_start_the_run(channel: grpc.aio.Channel) -> None:
    stub = sandbox_pb2_grpc.SandboxServiceStub(channel)
    call = stub.Execute(
        iter([sandbox_pb2.SandboxServiceExecuteRequest(result=program_pb2.FunctionResult())])
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_isolation_is_reported_in_health(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="genmesh.sandbox.isolation"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
