"""Sandbox benchmarks: per-run latency with full isolation, and implicit parallelism.

Measures, in one run:
- a trivial program (`1 + 1`): p50/p90 in the executor (in process), through SandboxService over
  gRPC, and end to end through an AgentService (the router's servicer) in front of it;
- ten independent host calls that each take 100 ms, against the same calls declared ordered
  (which the sandbox never overlaps), i.e. the sequential baseline;
- the trivial program in smolagents' LocalPythonExecutor (in process, no OS isolation) when
  installed.

Targets (DESIGN.md section 4): trivial p50 <= 10 ms end to end; ten 100 ms calls <= 150 ms.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from genmesh.router.agent import AgentService, ServerFunctions
from genmesh.runtime.auth import AuthInterceptor, KeyStore, digest
from genmesh.runtime.channel import key_interceptors
from genmesh.runtime.settings import ApiKey
from genmesh.sandbox.executor import Executor, py_from_value, value_from_py
from genmesh.v1 import agent_pb2, agent_pb2_grpc, program_pb2, sandbox_pb2, sandbox_pb2_grpc

KEY = "bench-key"
RUNS = 200
TEN = "rs = [work(i) for i in range(10)]\nsum(r for r in rs)"


async def work(i: int) -> int:
    """A 100 ms host function."""
    await asyncio.sleep(0.1)
    return i


class Host:
    async def call(self, call: program_pb2.FunctionCall) -> program_pb2.FunctionResult:
        value = await work(int(py_from_value(call.arguments.fields["i"])))
        return program_pb2.FunctionResult(call_id=call.call_id, value=value_from_py(value))


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered) * 1e3
    p90 = ordered[int(len(ordered) * 0.9)] * 1e3
    return f"p50 {p50:7.2f} ms   p90 {p90:7.2f} ms   (n={len(samples)})"


async def timed(action: Callable[[], Awaitable[Any]], runs: int = RUNS) -> list[float]:
    for _ in range(5):
        await action()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        await action()
        samples.append(time.perf_counter() - start)
    return samples


def start_sandbox_service() -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "GENMESH_INTERNAL_KEY": KEY, "GENMESH_SANDBOX_PORT": "0"}
    env.pop("GENMESH_CONFIG", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "genmesh", "serve", "sandbox"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        event = json.loads(line) if line.startswith("{") else {}
        if event.get("ready"):
            return process, int(event["port"])
    raise RuntimeError("the sandbox service did not start")


async def via_service(stub: Any, program: program_pb2.Program) -> program_pb2.ProgramResult:
    request = sandbox_pb2.SandboxServiceExecuteRequest(
        start=sandbox_pb2.SandboxStart(program=program)
    )
    async for response in stub.Execute(iter([request])):
        if response.WhichOneof("message") == "result":
            return response.result  # type: ignore[no-any-return]
    raise RuntimeError("no result")


def peers() -> list[str]:
    lines = []
    # pydantic-monty 1.x runs code in a pool of worker subprocesses behind a new session API;
    # it is not measured here yet.
    lines.append("pydantic-monty: not measured (1.x API not wired into this benchmark)")
    try:
        from smolagents import local_python_executor  # type: ignore[import-untyped, import-not-found, unused-ignore]

        executor = local_python_executor.LocalPythonExecutor(additional_authorized_imports=[])
        executor.send_tools({})
        samples = []
        for _ in range(RUNS):
            start = time.perf_counter()
            executor("1 + 1")
            samples.append(time.perf_counter() - start)
        lines.append(f"smolagents LocalPythonExecutor (in process): {summary(samples)}")
    except Exception as exc:
        lines.append(f"smolagents: not measured ({type(exc).__name__}: {exc})")
    return lines


async def main() -> None:
    trivial = program_pb2.Program(code="1 + 1")
    stubs = "def work(i=0): ..."
    parallel = program_pb2.Program(code=TEN, client_functions=stubs)
    sequential = program_pb2.Program(code=TEN, client_functions=stubs, ordered_functions=["work"])

    executor = Executor()
    await executor.start()
    missing = [layer["name"] for layer in executor.missing_layers()]
    print(f"isolation layers missing: {missing or 'none'}")
    in_process = await timed(lambda: executor.run(trivial, Host()))
    par = await timed(lambda: executor.run(parallel, Host()), runs=10)
    seq = await timed(lambda: executor.run(sequential, Host()), runs=3)
    await executor.stop()

    process, port = start_sandbox_service()
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", interceptors=key_interceptors(KEY)
        ) as channel:
            stub = sandbox_pb2_grpc.SandboxServiceStub(channel)
            direct = await timed(lambda: via_service(stub, trivial))
            server = grpc.aio.server(
                interceptors=[AuthInterceptor(KeyStore([ApiKey(name="b", sha256=digest(KEY))]))]
            )
            agent_pb2_grpc.add_AgentServiceServicer_to_server(
                AgentService(channel, ServerFunctions({"work": work})), server
            )
            agent_port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            async with grpc.aio.insecure_channel(
                f"127.0.0.1:{agent_port}", interceptors=key_interceptors(KEY)
            ) as router:
                agent = agent_pb2_grpc.AgentServiceStub(router)
                request = agent_pb2.ExecuteRequest(program=trivial)
                routed = await timed(lambda: agent.Execute(request))
                ten = program_pb2.Program(code=TEN)
                routed_ten = await timed(
                    lambda: agent.Execute(agent_pb2.ExecuteRequest(program=ten)), runs=10
                )
            await server.stop(None)
    finally:
        process.terminate()
        process.wait()

    p50 = statistics.median
    print(f"trivial, executor in process:        {summary(in_process)}")
    print(f"trivial, SandboxService over gRPC:   {summary(direct)}")
    print(f"trivial, through AgentService:       {summary(routed)}   target p50 <= 10 ms")
    print(f"ten 100 ms calls, implicit parallel: {summary(par)}   target <= 150 ms")
    print(f"ten 100 ms calls, through AgentService: {summary(routed_ten)}")
    print(f"ten 100 ms calls, ordered (sequential): {summary(seq)}")
    print(f"speed-up parallel vs sequential: {p50(seq) / p50(par):.1f}x")
    print(f"AgentService vs direct SandboxService (trivial p50): {p50(routed) / p50(direct):.2f}x")
    for line in peers():
        print(line)


if __name__ == "__main__":
    asyncio.run(main())
