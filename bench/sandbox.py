"""Sandbox benchmarks: genmesh beside pydantic-monty and smolagents, in one run.

Measures, side by side:
- a trivial program (`1 + 1`), start to result, p50/p95: genmesh in the executor (in process),
  through SandboxService over gRPC and through an AgentService (the router's servicer) in front
  of it; pydantic-monty in a fresh session per program and in one warm session; smolagents'
  LocalPythonExecutor;
- ten independent host calls that each take 100 ms: genmesh overlaps them implicitly (the
  program is a plain loop) and, as the sequential baseline, runs them one by one when they are
  declared ordered; pydantic-monty overlaps async host functions only when the program gathers
  them with `asyncio.gather`, and runs them in turn when it awaits each one; smolagents calls
  its (synchronous) tools one after another.

The systems isolate code very differently (ISOLATION below, printed with the figures), so the
latencies compare the price of each kind of isolation rather than like with like.

Targets (DESIGN.md section 4): trivial p50 <= 10 ms end to end; ten 100 ms calls <= 150 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import grpc

from genmesh.router.agent import AgentService, ServerFunctions
from genmesh.runtime.auth import AuthInterceptor, KeyStore, digest
from genmesh.runtime.channel import key_interceptors
from genmesh.runtime.settings import ApiKey
from genmesh.runtime.values import py_from_value, value_from_py
from genmesh.sandbox.executor import Executor
from genmesh.v1 import agent_pb2, agent_pb2_grpc, program_pb2, sandbox_pb2, sandbox_pb2_grpc

KEY = "bench-key"
RUNS = 200
TRIVIAL = "1 + 1"
TEN = "rs = [work(i) for i in range(10)]\nsum(r for r in rs)"
# Monty's host functions are coroutines in the sandbox: each call must be awaited, and only
# asyncio.gather overlaps them.
MONTY_IN_TURN = "rs = [await work(i) for i in range(10)]\nsum(rs)"
MONTY_GATHER = "import asyncio\nrs = await asyncio.gather(*[work(i) for i in range(10)])\nsum(rs)"
TRIVIAL_TARGET_MS = 10
TEN_TARGET_MS = 150

ISOLATION = {
    "genmesh": "a checked Python dialect in a fresh pre-forked child per run: new network "
    "namespace, unprivileged user, rlimits, no_new_privs, Landlock, seccomp",
    "pydantic-monty": "a Python interpreter written in Rust, in a pooled worker subprocess "
    "(reused across sessions): code reaches only the functions, files and OS calls the host "
    "passes in; the subprocess contains crashes; no OS confinement (seccomp, Landlock, "
    "namespaces) of the worker",
    "smolagents": "LocalPythonExecutor: an AST interpreter in the host process with an import "
    "allow-list; no process or OS isolation",
}
PARALLELISM = {
    "genmesh": "implicit: the plain loop's independent calls overlap",
    "pydantic-monty": "explicit: only asyncio.gather in the program overlaps calls",
    "smolagents": "none: tools are synchronous and run one after another",
}


async def work(i: int) -> int:
    """A 100 ms host function."""
    await asyncio.sleep(0.1)
    return i


def blocking_work(i: int) -> int:
    """The same host function for smolagents, whose tools are synchronous."""
    time.sleep(0.1)
    return i


class Host:
    async def call(self, call: program_pb2.FunctionCall) -> program_pb2.FunctionResult:
        value = await work(int(py_from_value(call.arguments.fields["i"])))
        return program_pb2.FunctionResult(call_id=call.call_id, value=value_from_py(value))


async def timed(action: Callable[[], Any], runs: int = RUNS, warmup: int = 5) -> dict[str, Any]:
    """p50/p95 of `action` (plain or async) after `warmup` unmeasured runs."""
    samples = []
    for index in range(warmup + runs):
        start = time.perf_counter()
        result = action()
        if inspect.isawaitable(result):
            await result
        if index >= warmup:
            samples.append(time.perf_counter() - start)
    ordered = sorted(samples)
    return {
        "p50_ms": statistics.median(ordered) * 1e3,
        "p95_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1e3,
        "n": len(samples),
    }


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


async def measure_genmesh(trivial: dict[str, Any], ten: dict[str, Any]) -> str:
    """Fills in genmesh's figures; returns the isolation layers not in force."""
    program = program_pb2.Program(code=TRIVIAL)
    stubs = "def work(i=0): ..."
    parallel = program_pb2.Program(code=TEN, client_functions=stubs)
    ordered = program_pb2.Program(code=TEN, client_functions=stubs, ordered_functions=["work"])

    executor = Executor()
    await executor.start()
    missing = ", ".join(str(layer["name"]) for layer in executor.missing_layers()) or "none"
    trivial["genmesh_executor"] = await timed(lambda: executor.run(program, Host()))
    ten["genmesh_implicit_parallel"] = await timed(lambda: executor.run(parallel, Host()), runs=10)
    ten["genmesh_ordered"] = await timed(lambda: executor.run(ordered, Host()), runs=3, warmup=1)
    await executor.stop()

    process, port = start_sandbox_service()
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", interceptors=key_interceptors(KEY)
        ) as channel:
            stub = sandbox_pb2_grpc.SandboxServiceStub(channel)
            trivial["genmesh_sandbox_service"] = await timed(lambda: via_service(stub, program))
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
                request = agent_pb2.ExecuteRequest(program=program)
                trivial["genmesh_agent_service"] = await timed(lambda: agent.Execute(request))
                routed = agent_pb2.ExecuteRequest(program=program_pb2.Program(code=TEN))
                ten["genmesh_agent_service"] = await timed(lambda: agent.Execute(routed), runs=10)
            await server.stop(None)
    finally:
        process.terminate()
        process.wait()
    return missing


async def measure_monty(trivial: dict[str, Any], ten: dict[str, Any]) -> str:
    """Fills in pydantic-monty's figures through its asyncio API; returns its version."""
    from pydantic_monty import AsyncMonty

    async with AsyncMonty() as pool:

        async def fresh(code: str) -> Any:
            async with pool.checkout() as session:
                return await session.feed_run(code, external_lookup={"work": work})

        for code, expected in ((TRIVIAL, 2), (MONTY_IN_TURN, 45), (MONTY_GATHER, 45)):
            if (got := await fresh(code)) != expected:
                raise RuntimeError(f"monty returned {got!r} for {code!r}")
        trivial["monty_fresh_session"] = await timed(lambda: fresh(TRIVIAL))
        async with pool.checkout() as session:
            trivial["monty_warm_session"] = await timed(lambda: session.feed_run(TRIVIAL))
        ten["monty_gather"] = await timed(lambda: fresh(MONTY_GATHER), runs=10)
        ten["monty_awaited_in_turn"] = await timed(lambda: fresh(MONTY_IN_TURN), runs=3, warmup=1)
    return metadata.version("pydantic-monty")


async def measure_smolagents(trivial: dict[str, Any], ten: dict[str, Any]) -> str:
    """Fills in smolagents' figures (LocalPythonExecutor); returns its version."""
    from smolagents import local_python_executor  # type: ignore[import-untyped]

    executor = local_python_executor.LocalPythonExecutor(additional_authorized_imports=[])
    executor.send_tools({"work": blocking_work})
    if (got := executor(TEN).output) != 45:
        raise RuntimeError(f"smolagents returned {got!r}")
    trivial["smolagents"] = await timed(lambda: executor(TRIVIAL))
    ten["smolagents_sequential"] = await timed(lambda: executor(TEN), runs=3, warmup=1)
    return metadata.version("smolagents")


async def run() -> dict[str, Any]:
    trivial: dict[str, Any] = {}
    ten: dict[str, Any] = {}
    missing = await measure_genmesh(trivial, ten)
    versions: dict[str, str] = {}
    not_measured: dict[str, str] = {}
    for name, measure in (("pydantic-monty", measure_monty), ("smolagents", measure_smolagents)):
        try:
            versions[name] = await measure(trivial, ten)
        except Exception as exc:
            not_measured[name] = f"{type(exc).__name__}: {exc}"

    def ratio(slow: dict[str, Any] | None, fast: dict[str, Any] | None) -> float | None:
        return slow["p50_ms"] / fast["p50_ms"] if slow and fast else None

    ratios = {
        "genmesh_ordered_over_parallel": ratio(
            ten["genmesh_ordered"], ten["genmesh_implicit_parallel"]
        ),
        "monty_in_turn_over_gather": ratio(
            ten.get("monty_awaited_in_turn"), ten.get("monty_gather")
        ),
        "agent_service_over_sandbox_service_trivial_p50": ratio(
            trivial["genmesh_agent_service"], trivial["genmesh_sandbox_service"]
        ),
    }
    met = (
        trivial["genmesh_agent_service"]["p50_ms"] <= TRIVIAL_TARGET_MS
        and ten["genmesh_implicit_parallel"]["p50_ms"] <= TEN_TARGET_MS
    )
    return {
        "isolation_layers_missing": missing,
        "trivial": trivial,
        "ten_calls": ten,
        "ratios": {key: value for key, value in ratios.items() if value is not None},
        "targets": {
            "trivial.genmesh_agent_service.p50_ms": f"<= {TRIVIAL_TARGET_MS}",
            "ten_calls.genmesh_implicit_parallel.p50_ms": f"<= {TEN_TARGET_MS}",
        },
        "met": met,
        "versions": versions,
        "not_measured": not_measured,
        "parallelism": PARALLELISM,
        "isolation": ISOLATION,
    }


LABELS = {
    "genmesh_executor": "genmesh, executor in process",
    "genmesh_sandbox_service": "genmesh, SandboxService over gRPC",
    "genmesh_agent_service": "genmesh, through AgentService",
    "monty_fresh_session": "pydantic-monty, fresh session each",
    "monty_warm_session": "pydantic-monty, one warm session",
    "smolagents": "smolagents LocalPythonExecutor",
    "genmesh_implicit_parallel": "genmesh, implicit parallel",
    "genmesh_ordered": "genmesh, declared ordered",
    "monty_gather": "pydantic-monty, asyncio.gather",
    "monty_awaited_in_turn": "pydantic-monty, awaited in turn",
    "smolagents_sequential": "smolagents, in turn",
}


def report(results: dict[str, Any]) -> None:
    print(f"genmesh isolation layers missing: {results['isolation_layers_missing']}")
    for section, title in (("trivial", "trivial program"), ("ten_calls", "ten 100 ms calls")):
        print(f"\n{title:<40}{'p50 ms':>9}{'p95 ms':>9}{'n':>5}")
        for key, figure in results[section].items():
            target = results["targets"].get(f"{section}.{key}.p50_ms")
            print(
                f"{LABELS[key]:<40}{figure['p50_ms']:>9.2f}{figure['p95_ms']:>9.2f}"
                f"{figure['n']:>5}   {f'target p50 {target} ms' if target else ''}"
            )
    print()
    for key, value in results["ratios"].items():
        print(f"{key}: {value:.2f}x")
    print("targets met" if results["met"] else "TARGETS MISSED")
    for name, reason in results["not_measured"].items():
        print(f"{name}: NOT MEASURED ({reason})")
    print("\nversions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()))
    for name, how in results["parallelism"].items():
        print(f"parallel host calls, {name}: {how}")
    for name, how in results["isolation"].items():
        print(f"isolation, {name}: {how}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    results = asyncio.run(run())
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        report(results)


if __name__ == "__main__":
    main()
