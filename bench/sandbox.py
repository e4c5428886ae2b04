"""Sandbox benchmarks: genmesh beside pydantic-monty and smolagents, and beside an earlier genmesh.

Measures, side by side:
- a trivial program (`1 + 1`), start to result, p50/p95: genmesh in the executor (in process),
  through SandboxService over gRPC and through the router's AgentService in front of it (both
  `genmesh serve` processes as the mesh runs them, the router answering the host function from
  its function registry), back to back and paced (a pause before each run, so that
  the services are idle when it starts, as below saturation); pydantic-monty in a fresh session
  per program and in one warm session; smolagents' LocalPythonExecutor;
- ten independent host calls that each take 100 ms: genmesh overlaps them implicitly (the
  program is a plain loop) and, as the sequential baseline, runs them one by one when they are
  declared ordered; pydantic-monty overlaps async host functions only when the program gathers
  them with `asyncio.gather`, and runs them in turn when it awaits each one; smolagents calls
  its (synchronous) tools one after another.

The systems isolate code very differently (ISOLATION below, printed with the figures), so the
latencies compare the price of each kind of isolation rather than like with like.

With `--baseline REF` (a commit, e.g. the previous main), genmesh's service figures are measured
on REF's services and on this tree's in the same run: each side runs its own sandbox service and
router, and the sides take turns round after round, so the machine's load weighs on both
alike. The ratios are this tree's p50 over REF's.

Targets (DESIGN.md section 4), through the router with every isolation layer in force: trivial
p50 <= 5 ms; ten 100 ms calls <= 120 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import json
import os
import shutil
import site
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import venv
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

from google.protobuf import struct_pb2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import command_line, emit
from genmesh.runtime.channel import connect
from genmesh.v1 import agent_pb2, agent_pb2_grpc, program_pb2, sandbox_pb2, sandbox_pb2_grpc

KEY = "bench-key"
RUNS = 200
TRIVIAL = "1 + 1"
TEN = "rs = [work(i) for i in range(10)]\nsum(r for r in rs)"
# Monty's host functions are coroutines in the sandbox: each call must be awaited, and only
# asyncio.gather overlaps them.
MONTY_IN_TURN = "rs = [await work(i) for i in range(10)]\nsum(rs)"
MONTY_GATHER = "import asyncio\nrs = await asyncio.gather(*[work(i) for i in range(10)])\nsum(rs)"
TRIVIAL_TARGET_MS = 5
TEN_TARGET_MS = 120
ROUNDS = 10  # turns each side takes in the side-by-side comparison
# The pause before each run of the paced figures: long enough for the services to finish what
# a run leaves behind (its child's exit, the next spare's fork and warm-up), as they do between
# runs that are not back to back.
PAUSE = 0.02
CURRENT = "this tree"

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
        value = await work(int(call.arguments.fields["i"].number_value))
        return program_pb2.FunctionResult(
            call_id=call.call_id, value=struct_pb2.Value(number_value=value)
        )


Action = Callable[[], Any]


async def sample(action: Action, runs: int, pause: float = 0.0) -> list[float]:
    """The durations of `runs` calls of `action` (plain or async), one after another, with
    `pause` seconds (not timed) before each."""
    samples = []
    for _ in range(runs):
        if pause:
            await asyncio.sleep(pause)
        start = time.perf_counter()
        result = action()
        if inspect.isawaitable(result):
            await result
        samples.append(time.perf_counter() - start)
    return samples


def summary(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    return {
        "p50_ms": statistics.median(ordered) * 1e3,
        "p95_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1e3,
        "n": len(ordered),
    }


async def timed(action: Action, runs: int = RUNS, warmup: int = 5) -> dict[str, Any]:
    """p50/p95 of `action` after `warmup` unmeasured runs."""
    await sample(action, warmup)
    return summary(await sample(action, runs))


def service_environment(config: Path) -> dict[str, str]:
    return {
        **os.environ,
        "GENMESH_API_KEY": KEY,
        "GENMESH_INTERNAL_KEY": KEY,
        "GENMESH_CONFIG": str(config),
    }


@dataclass
class Stack:
    """genmesh as it runs programs: a sandbox service and a router in front of it, each a
    `genmesh serve` process of `python` (whose genmesh package is the one measured). The router
    answers `work` from its function registry."""

    name: str
    python: str
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-sandbox-")))

    def start(self) -> tuple[int, int]:
        """Starts both; returns the sandbox service's port and the router's."""
        functions = self.folder / "functions"
        functions.mkdir()
        (functions / "work.py").write_text(f"import asyncio\n\n\n{inspect.getsource(work)}")
        sandbox = self._spawn("sandbox", {"port": 0})
        router = {"port": 0, "sandbox_address": f"127.0.0.1:{sandbox}"}
        return sandbox, self._spawn(
            "router", {**router, "function_folders": [str(functions)], "bindings": []}
        )

    def _spawn(self, service: str, config: dict[str, Any]) -> int:
        path = self.folder / f"{service}.json"
        path.write_text(json.dumps({service: config}))
        process = subprocess.Popen(
            [self.python, "-m", "genmesh", "serve", service],
            env=service_environment(path),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.processes.append(process)
        assert process.stdout is not None
        for line in process.stdout:
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("ready"):
                return int(event["port"])
        raise RuntimeError(f"{self.name}: the {service} service did not start")

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
            process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def baseline_python(ref: str, folder: Path) -> str:
    """An interpreter that imports genmesh from commit `ref` and everything else from this
    environment: a virtual environment in `folder` whose site-packages holds `genmesh` (REF's
    services/, unpacked beside it) and a .pth naming this environment's site-packages.

    Not PYTHONPATH: the sandbox service starts its zygote with its own interpreter, `-s -P` and
    an environment of its own, so the package must be found from the interpreter's site-packages,
    as this tree's editable install is found."""
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", "--format=tar", ref, "services"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder / "tree", filter="data")
    environment = folder / "venv"
    venv.EnvBuilder(symlinks=True).create(environment)
    packages = Path(sysconfig.get_path("purelib", scheme="venv", vars={"base": str(environment)}))
    (packages / "genmesh").symlink_to(folder / "tree" / "services")
    (packages / "bench-environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    python = str(environment / "bin" / "python")
    found = subprocess.run(  # as the zygote looks for it
        [python, "-s", "-P", "-c", "import genmesh; print(genmesh.__path__[0])"],
        env={},
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if Path(found).resolve() != (folder / "tree" / "services").resolve():
        raise RuntimeError(f"the baseline's interpreter imports genmesh from {found}")
    return python


def expect(result: program_pb2.ProgramResult, value: float) -> None:
    """A wrong result fails the benchmark rather than timing a failure."""
    if result.HasField("error") or result.value.number_value != value:
        raise RuntimeError(f"expected {value}, got {result}")


async def via_service(stub: Any, program: program_pb2.Program, value: float) -> None:
    request = sandbox_pb2.SandboxServiceExecuteRequest(
        start=sandbox_pb2.SandboxStart(program=program)
    )
    async for response in stub.Execute(iter([request])):
        if response.WhichOneof("message") == "result":
            return expect(response.result, value)
    raise RuntimeError("no result")


async def via_agent(stub: Any, request: agent_pb2.ExecuteRequest, value: float) -> None:
    expect((await stub.Execute(request)).result, value)


class Figure(NamedTuple):
    """A figure measured on every stack: `runs` runs of one of `service_actions` per turn."""

    section: str
    key: str
    action: str
    runs: int
    warmup: int
    pause: float = 0.0  # seconds between runs, not timed

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"


SERVICE_FIGURES = (
    Figure("trivial", "genmesh_sandbox_service", "sandbox", 20, 5),
    Figure("trivial", "genmesh_agent_service", "agent", 20, 5),
    Figure("trivial", "genmesh_sandbox_service_paced", "sandbox", 10, 2, PAUSE),
    Figure("trivial", "genmesh_agent_service_paced", "agent", 10, 2, PAUSE),
    Figure("ten_calls", "genmesh_agent_service", "ten", 2, 1),
)


@contextlib.asynccontextmanager
async def service_actions(stack: Stack) -> AsyncIterator[dict[str, Action]]:
    """Starts `stack`; yields its actions: the trivial program through SandboxService
    ("sandbox") and through the router ("agent"), ten calls through the router ("ten")."""
    try:
        sandbox_port, agent_port = await asyncio.to_thread(stack.start)
        async with (
            connect(f"127.0.0.1:{sandbox_port}", KEY) as sandbox,
            connect(f"127.0.0.1:{agent_port}", KEY) as router,
        ):
            direct = sandbox_pb2_grpc.SandboxServiceStub(sandbox)
            agent = agent_pb2_grpc.AgentServiceStub(router)
            trivial = program_pb2.Program(code=TRIVIAL)
            routed = agent_pb2.ExecuteRequest(program=trivial)
            ten = agent_pb2.ExecuteRequest(program=program_pb2.Program(code=TEN))
            yield {
                "sandbox": lambda: via_service(direct, trivial, 2),
                "agent": lambda: via_agent(agent, routed, 2),
                "ten": lambda: via_agent(agent, ten, 45),
            }
    finally:
        stack.stop()


async def measure_services(stacks: list[Stack], rounds: int) -> dict[str, dict[str, Any]]:
    """SERVICE_FIGURES on every stack, `rounds` turns each, the order alternating from round to
    round so that the machine's load weighs on every stack alike; keyed "section.key", then by
    stack name."""
    samples: dict[str, dict[str, list[float]]] = {
        figure.name: {stack.name: [] for stack in stacks} for figure in SERVICE_FIGURES
    }
    async with contextlib.AsyncExitStack() as exits:
        actions = [await exits.enter_async_context(service_actions(stack)) for stack in stacks]
        for mine in actions:
            for figure in SERVICE_FIGURES:
                await sample(mine[figure.action], figure.warmup, figure.pause)
        for index in range(rounds):
            turns = list(zip(stacks, actions, strict=True))
            for stack, mine in turns if index % 2 == 0 else reversed(turns):
                for figure in SERVICE_FIGURES:
                    taken = await sample(mine[figure.action], figure.runs, figure.pause)
                    samples[figure.name][stack.name] += taken
    return {
        figure: {name: summary(values) for name, values in by_stack.items()}
        for figure, by_stack in samples.items()
    }


async def measure_executor(trivial: dict[str, Any], ten: dict[str, Any]) -> str:
    """Fills in the figures of genmesh's executor, in this process; returns the isolation layers
    not in force."""
    from genmesh.sandbox.executor import Executor  # this tree's only: see the imports above

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


async def run(baseline: str | None, rounds: int) -> dict[str, Any]:
    trivial: dict[str, Any] = {}
    ten: dict[str, Any] = {}
    missing = await measure_executor(trivial, ten)
    stacks = [Stack(CURRENT, sys.executable)]
    with tempfile.TemporaryDirectory(prefix="genmesh-bench-") as folder:
        if baseline is not None:
            python = await asyncio.to_thread(baseline_python, baseline, Path(folder))
            stacks.insert(0, Stack(baseline, python))
        services = await measure_services(stacks, rounds)
    for figure, by_stack in services.items():
        section, key = figure.split(".")
        (trivial if section == "trivial" else ten)[key] = by_stack[CURRENT]
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
        and ten["genmesh_agent_service"]["p50_ms"] <= TEN_TARGET_MS
    )
    results = {
        "isolation_layers_missing": missing,
        "trivial": trivial,
        "ten_calls": ten,
        "ratios": {key: value for key, value in ratios.items() if value is not None},
        "targets": {
            "trivial.genmesh_agent_service.p50_ms": f"<= {TRIVIAL_TARGET_MS}",
            "ten_calls.genmesh_agent_service.p50_ms": f"<= {TEN_TARGET_MS}",
        },
        "met": met,
        "versions": versions,
        "not_measured": not_measured,
        "parallelism": PARALLELISM,
        "isolation": ISOLATION,
    }
    if baseline is not None:
        results["baseline"] = {
            "ref": baseline,
            "rounds": rounds,
            "figures": {
                figure: {
                    "baseline": by_stack[baseline],
                    "current": by_stack[CURRENT],
                    "current_over_baseline_p50": ratio(by_stack[CURRENT], by_stack[baseline]),
                }
                for figure, by_stack in services.items()
            },
        }
    return results


LABELS = {
    "genmesh_executor": "genmesh, executor in process",
    "genmesh_sandbox_service": "genmesh, SandboxService over gRPC",
    "genmesh_agent_service": "genmesh, through the router",
    "genmesh_sandbox_service_paced": "genmesh, SandboxService, paced",
    "genmesh_agent_service_paced": "genmesh, router, paced",
    "monty_fresh_session": "pydantic-monty, fresh session each",
    "monty_warm_session": "pydantic-monty, one warm session",
    "smolagents": "smolagents LocalPythonExecutor",
    "genmesh_implicit_parallel": "genmesh, implicit parallel",
    "genmesh_ordered": "genmesh, declared ordered",
    "monty_gather": "pydantic-monty, asyncio.gather",
    "monty_awaited_in_turn": "pydantic-monty, awaited in turn",
    "smolagents_sequential": "smolagents, in turn",
}
SECTIONS = {"trivial": "trivial program", "ten_calls": "ten 100 ms calls"}


def report(results: dict[str, Any]) -> None:
    print(f"genmesh isolation layers missing: {results['isolation_layers_missing']}")
    for section, title in SECTIONS.items():
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
    if "baseline" in results:
        report_baseline(results["baseline"])
    for name, reason in results["not_measured"].items():
        print(f"{name}: NOT MEASURED ({reason})")
    print("\nversions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()))
    for name, how in results["parallelism"].items():
        print(f"parallel host calls, {name}: {how}")
    for name, how in results["isolation"].items():
        print(f"isolation, {name}: {how}")


def report_baseline(compared: dict[str, Any]) -> None:
    ref = compared["ref"]
    print(
        f"\nside by side with {ref} ({compared['rounds']} interleaved rounds; ratio = this tree's "
        f"p50 over {ref}'s)"
    )
    print(f"{'':<52}{ref + ' p50/p95':>18}{CURRENT + ' p50/p95':>20}{'ratio':>8}")
    for figure, sides in compared["figures"].items():
        section, key = figure.split(".")
        base, current = sides["baseline"], sides["current"]
        print(
            f"{SECTIONS[section] + ', ' + LABELS[key].removeprefix('genmesh, '):<52}"
            f"{base['p50_ms']:>11.2f}/{base['p95_ms']:<6.2f}"
            f"{current['p50_ms']:>13.2f}/{current['p95_ms']:<6.2f}"
            f"{sides['current_over_baseline_p50']:>7.2f}x"
        )


def main() -> None:
    parser = command_line(__doc__)
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also measure the services of this commit, interleaved with this tree's",
    )
    parser.add_argument(
        "--rounds", type=int, default=ROUNDS, help="turns each side takes (default %(default)s)"
    )
    args = parser.parse_args()
    results = asyncio.run(run(args.baseline, args.rounds))
    emit(results, args.json, report)


if __name__ == "__main__":
    main()
