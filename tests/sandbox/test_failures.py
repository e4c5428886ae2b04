"""Every way a run fails ends it with a coded result, and no failed run harms the next.

Each failure mode is followed by an ordinary program whose host calls must be answered (a run
left behind with a stale watch on its socket's file descriptor made the next one time out with
zero calls); over the real gRPC sandbox service the health check answers SERVING throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import psutil
import pytest
import pytest_asyncio
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genmesh.client import error_details
from genmesh.router.agent import AgentService, ServerFunctions
from genmesh.router.scripted import workflow_failed
from genmesh.runtime import values
from genmesh.runtime.auth import KeyStore, digest
from genmesh.runtime.channel import key_interceptors
from genmesh.runtime.server import server_interceptors
from genmesh.runtime.settings import ApiKey
from genmesh.sandbox import dialect, jail
from genmesh.sandbox.executor import SPAWN, Executor, Exit, RunLimits, _signal_error
from genmesh.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    program_pb2,
    sandbox_pb2,
    sandbox_pb2_grpc,
)
from tests.sandbox.conftest import KEY, PythonHost, run_result
from tests.sandbox.test_service import execute

pytestmark = pytest.mark.asyncio(loop_scope="session")

Kind = program_pb2.ProgramError.Kind
Request = sandbox_pb2.SandboxServiceExecuteRequest
STUBS = "def fetch(key=None): ...\n"
ORDINARY = "a = fetch(1)\nb = fetch(2)\nprint('ordinary')\na.key + b.key"
BUSY = "fetch(0)\nwhile True:\n    pass"


def host(**functions: Any) -> PythonHost:
    return PythonHost(**({"fetch": lambda key=None: {"key": key}} | functions))


def program(code: str, client_functions: str = STUBS, wall: float = 0) -> program_pb2.Program:
    made = program_pb2.Program(code=code, client_functions=client_functions)
    if wall:
        made.limits.wall_time.FromNanoseconds(int(wall * 1e9))
    return made


async def ordinary_run(executor: Executor) -> None:
    """An innocent program after a failure: its calls are answered and it returns its value."""
    result = await executor.run(program(ORDINARY, wall=10), host())
    assert run_result(result) == 3
    assert len(result.call_log.calls) == 2


@dataclass(frozen=True)
class Failure:
    name: str
    code: str
    kind: Kind.ValueType
    says: str
    client_functions: str = STUBS
    wall: float = 0
    rule: str = ""

    def program(self) -> program_pb2.Program:
        return program(self.code, self.client_functions, self.wall)


FAILURES = [
    Failure("int-result", "10 ** 400", Kind.KIND_INVALID_VALUE, "result: an integer of 1329 bits"),
    Failure("int-argument", "fetch(10 ** 400)", Kind.KIND_INVALID_VALUE, "arguments.key: an int"),
    Failure("surrogate-key", "{'\\ud800': 1}", Kind.KIND_INVALID_VALUE, "result['\\ud800']: "),
    Failure("surrogate-value", "fetch(['\\udfff'])", Kind.KIND_INVALID_VALUE, "arguments.key[0]"),
    Failure("nan-result", "[float('nan')]", Kind.KIND_INVALID_VALUE, "result[0]: nan is not"),
    Failure("inf-argument", "fetch(1e308 * 10)", Kind.KIND_INVALID_VALUE, "inf is not a finite"),
    Failure(
        "too-deep",
        "x = []\nfor i in range(40):\n    x = [x]\nx",
        Kind.KIND_INVALID_VALUE,
        f"nested deeper than {values.MAX_DEPTH} levels",
    ),
    Failure("too-large", "'x' * (5 << 20)", Kind.KIND_LIMIT, "result: more than the limit of"),
    Failure(
        "stub-default",
        "1",
        Kind.KIND_VIOLATION,
        "is not a literal",
        client_functions="def f(a={[]: 1}): ...",
        rule="stub-default",
    ),
    Failure(
        "oversized-source",
        "1\n" + "#" * dialect.MAX_SOURCE_BYTES,
        Kind.KIND_VIOLATION,
        "larger than",
        rule="size",
    ),
    Failure("line-flood", "for i in range(10 ** 6):\n    print(i)", Kind.KIND_LIMIT, "lines"),
    Failure("empty-line-flood", "print('\\n' * 10 ** 6)", Kind.KIND_LIMIT, "lines of output"),
    Failure("byte-flood", "print('x' * (3 << 20))", Kind.KIND_LIMIT, "bytes of output"),
    Failure("wall-clock", BUSY, Kind.KIND_TIMEOUT, "wall-clock limit", wall=0.5),
    Failure("many-items", "[0] * 7_000_000", Kind.KIND_LIMIT, "more than the limit of"),
    Failure("many-item-argument", "fetch([{}] * 3_000_000)", Kind.KIND_LIMIT, "arguments.key"),
    Failure(
        "unprintable-message",
        "raise ValueError(10 ** 5000)",
        Kind.KIND_EXCEPTION,
        "message of this ValueError cannot be shown",
    ),
]


@pytest.mark.parametrize("failure", FAILURES, ids=[f.name for f in FAILURES])
async def test_each_failure_is_coded_and_the_next_run_is_clean(
    executor: Executor, failure: Failure
) -> None:
    result = await executor.run(failure.program(), host())
    assert result.error.kind == failure.kind, result.error
    assert failure.says in result.error.message
    assert result.error.rule == failure.rule
    json_format.MessageToJson(result)  # the whole result, call log included, can be shown
    await ordinary_run(executor)


async def test_a_value_that_cannot_cross_fails_where_it_is_sent(executor: Executor) -> None:
    code = "try:\n    fetch({'n': 2 ** 1100})\nexcept ValueError as exc:\n    out = str(exc)\nout"
    assert run_result(await executor.run(program(code), host())) == (
        "arguments.key.n: an integer of 1101 bits is beyond the range of a double"
    )
    result = await executor.run(program("x = 1\nfetch(float('nan'))"), host())
    assert (result.error.kind, result.error.line) == (Kind.KIND_INVALID_VALUE, 2)


async def test_host_answers_that_cannot_cross_fail_the_call(executor: Executor) -> None:
    deep = struct_pb2.Value(string_value="bottom")
    for _ in range(40):
        outer = struct_pb2.Value()
        outer.list_value.values.append(deep)
        deep = outer
    answers = {"nan": struct_pb2.Value(number_value=float("nan")), "deep": deep}

    class RawHost:
        async def call(self, call: program_pb2.FunctionCall) -> program_pb2.FunctionResult:
            return program_pb2.FunctionResult(value=answers[str(call.arguments["key"])])

    code = (
        "out = []\nfor k in ['nan', 'deep']:\n    try:\n        out.append(fetch(k) + 1)\n"
        "    except HostError as exc:\n        out.append(str(exc))\nout"
    )
    result = await executor.run(program(code), RawHost())
    assert run_result(result) == [
        "the host's answer cannot cross: result: nan is not a finite number",
        f"the host's answer cannot cross: result{'[0]' * 30}: nested deeper than 30 levels",
    ]
    # The log keeps what the program saw, so it serialises and replays the same way.
    assert [c.result.WhichOneof("outcome") for c in result.call_log.calls] == ["error"] * 2
    json_format.MessageToJson(result.call_log)
    await ordinary_run(executor)


async def test_globals_and_start_frames_that_cannot_cross(executor: Executor) -> None:
    nan = program("1")
    nan.globals.fields["ratio"].number_value = float("nan")
    result = await executor.run(nan, host())
    assert result.error.kind == Kind.KIND_INVALID_VALUE
    assert result.error.message == "globals.ratio: nan is not a finite number"
    huge = await executor.run(program("#" * (17 << 20)), host())
    assert huge.error.kind == Kind.KIND_LIMIT
    assert "too large to start" in huge.error.message
    await ordinary_run(executor)


async def test_printed_lines_travel_in_batches(executor: Executor) -> None:
    lines: list[str] = []

    async def on_log(line: program_pb2.LogLine) -> None:
        lines.append(line.text)

    code = "for i in range(9000):\n    print('line', i)\n'done'"
    result = await executor.run(program(code), host(), on_log=on_log)
    assert run_result(result) == "done"
    printed = "\n".join(lines).split("\n")
    assert printed == [f"line {i}" for i in range(9000)]
    assert [line.text for line in result.call_log.logs] == lines
    assert len(lines) < 9000 / 50


def busy_child(zygote: int, timeout: float = 30) -> psutil.Process:
    """The zygote's child whose CPU time grows: the one running the program."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = {p.pid: p.cpu_times().user for p in psutil.Process(zygote).children()}
        time.sleep(0.3)
        for pid, used in before.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                if psutil.Process(pid).cpu_times().user - used > 0.02:
                    return psutil.Process(pid)
    raise AssertionError("no child of the zygote is running the program")


def zygote_pid(executor: Executor) -> int:
    assert executor.zygote.process is not None
    return executor.zygote.process.pid


async def test_a_killed_child_fails_its_run_only(executor: Executor) -> None:
    running = asyncio.create_task(executor.run(program(BUSY), host()))
    child = await asyncio.to_thread(busy_child, zygote_pid(executor))
    child.kill()
    result = await running
    assert result.error.kind == Kind.KIND_MEMORY, result.error
    await ordinary_run(executor)


async def test_a_cancelled_run_kills_its_child(executor: Executor) -> None:
    running = asyncio.create_task(executor.run(program(BUSY), host()))
    child = await asyncio.to_thread(busy_child, zygote_pid(executor))
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    await asyncio.to_thread(child.wait, 10)
    await ordinary_run(executor)


async def test_the_watchdog_ends_a_run_stuck_outside_the_child(executor: Executor) -> None:
    """A stopped zygote never answers the spawn a run waits for; the watchdog ends that run."""
    zygote = zygote_pid(executor)
    os.kill(zygote, signal.SIGSTOP)
    try:
        messages = []
        for _ in range(3):  # the first runs may still find a child spawned before the stop
            result = await executor.run(program("1", wall=0.5), host())
            messages.append(result.error.message)
            if result.error.kind == Kind.KIND_TIMEOUT:
                break
        assert "the watchdog ended the run" in messages[-1], messages
    finally:
        os.kill(zygote, signal.SIGCONT)
    await ordinary_run(executor)


class HealthWatch:
    """Checks the service's health every few tens of milliseconds while it runs programs; a check
    unanswered within seconds (a blocked event loop, a busy machine aside) counts as a failure."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float = 5.0) -> None:
        self.health = health_pb2_grpc.HealthStub(channel)
        self.timeout = timeout
        self.statuses: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        while True:
            try:
                reply = await self.health.Check(
                    health_pb2.HealthCheckRequest(), timeout=self.timeout
                )
                self.statuses.append(
                    health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                )
            except grpc.aio.AioRpcError as exc:
                self.statuses.append(exc.code().name)
            await asyncio.sleep(0.03)

    async def __aenter__(self) -> HealthWatch:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def assert_serving(self) -> None:
        assert self.statuses, "no health check was answered"
        assert set(self.statuses) == {"SERVING"}, self.statuses


async def refused(channel: grpc.aio.Channel, made: program_pb2.Program) -> dict[str, str]:
    """The field violations of a program the service refuses with INVALID_ARGUMENT."""
    stub = sandbox_pb2_grpc.SandboxServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.Execute(iter([Request(start=sandbox_pb2.SandboxStart(program=made))])):
            pass
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    return details.violations


async def cancelled(
    channel: grpc.aio.Channel, made: program_pb2.Program
) -> program_pb2.ProgramResult:
    """Runs `made` and cancels it as soon as its first host call arrives."""
    stub = sandbox_pb2_grpc.SandboxServiceStub(channel)
    requests: asyncio.Queue[Request | None] = asyncio.Queue()
    await requests.put(Request(start=sandbox_pb2.SandboxStart(program=made)))

    async def feed() -> AsyncIterator[Request]:
        while (request := await requests.get()) is not None:
            yield request

    cancel = common_pb2.Control(action=common_pb2.Control.ACTION_CANCEL)
    async for response in stub.Execute(feed()):
        if response.WhichOneof("message") == "call":
            await requests.put(Request(control=cancel))
        elif response.WhichOneof("message") == "result":
            await requests.put(None)
            return response.result
    raise AssertionError("the stream ended without a result")


def answer(name: str, key: Any = None) -> Any:
    return {"key": key}


async def served(channel: grpc.aio.Channel, made: program_pb2.Program) -> program_pb2.ProgramResult:
    result, _ = await execute(channel, made, answer)
    return result


async def test_the_service_serves_through_every_failure(channel: grpc.aio.Channel) -> None:
    async with HealthWatch(channel) as watch:
        for failure in FAILURES:
            if failure.rule == "size":
                continue  # the service refuses it before it runs (below)
            result = await served(channel, failure.program())
            assert result.error.kind == failure.kind, (failure.name, result.error)
            ordinary = await served(channel, program(ORDINARY, wall=10))
            assert values.py_from_value(ordinary.value) == 3, (failure.name, ordinary.error)
        stopped = await cancelled(channel, program(BUSY))
        assert stopped.error.kind == Kind.KIND_CANCELLED
        oversized = program("1")
        oversized.library = "#" * (dialect.MAX_SOURCE_BYTES + 1)
        oversized.globals.fields["ratio"].number_value = float("inf")
        assert await refused(channel, oversized) == {
            "program.library": f"{dialect.MAX_SOURCE_BYTES + 1} bytes is more than the limit "
            f"of {dialect.MAX_SOURCE_BYTES}",
            "program.globals.ratio": "inf is not a finite number",
        }
        ordinary = await served(channel, program(ORDINARY, wall=10))
        assert values.py_from_value(ordinary.value) == 3
    watch.assert_serving()


def max_size_program() -> str:
    """A program of dense calls and attributes as large as the dialect takes: one of the
    slowest shapes to validate and compile."""
    lines = []
    size = 0
    for i in range(dialect.MAX_SOURCE_BYTES):
        line = f"f(g(h(i(j(k({i})))))).a.b.c\n"
        if size + len(line) > dialect.MAX_SOURCE_BYTES:
            break
        lines.append(line)
        size += len(line)
    return "".join(lines)


async def test_health_answers_while_a_max_size_program_compiles(
    channel: grpc.aio.Channel,
) -> None:
    """The compile happens in the child, so the service's event loop keeps answering."""
    big = program(max_size_program(), client_functions="")
    async with HealthWatch(channel) as watch:
        result = await served(channel, big)
        answered_meanwhile = len(watch.statuses)
    assert result.error.type == "NameError", result.error  # compiled in full, then ran
    assert answered_meanwhile >= 3
    watch.assert_serving()


async def test_the_service_streams_printed_lines_in_few_messages(
    channel: grpc.aio.Channel,
) -> None:
    made = program("for i in range(9000):\n    print('line', i)\n'done'")
    result, logs = await execute(channel, made, answer)
    assert values.py_from_value(result.value) == "done"
    assert "\n".join(logs).split("\n") == [f"line {i}" for i in range(9000)]
    assert len(logs) < 9000 / 50


async def nan(key: Any = None) -> float:
    """A server function whose answer cannot cross."""
    return float("nan")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def router(channel: grpc.aio.Channel) -> AsyncIterator[Any]:
    """The router's AgentService in front of the real sandbox service (an aio stub)."""
    server = grpc.aio.server(
        interceptors=server_interceptors(KeyStore([ApiKey(name="test", sha256=digest(KEY))]))
    )
    service = AgentService(channel, ServerFunctions({"nan": nan}))
    agent_pb2_grpc.add_AgentServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", interceptors=key_interceptors(KEY)
    ) as client:
        yield agent_pb2_grpc.AgentServiceStub(client)
    await server.stop(None)


async def test_failures_through_the_router(router: Any) -> None:
    async def execute_code(code: str) -> program_pb2.ProgramResult:
        made = program_pb2.Program(code=code)
        reply: agent_pb2.ExecuteResponse = await router.Execute(
            agent_pb2.ExecuteRequest(program=made), timeout=30
        )
        return reply.result

    flood = await execute_code("while True:\n    print('')")
    assert flood.error.kind == Kind.KIND_LIMIT
    caught_nan = "try:\n    out = nan() + 1\nexcept HostError as e:\n    out = str(e)\nout"
    assert run_result(await execute_code(caught_nan)) == (
        "InvalidValueError: result: nan is not a finite number"
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await execute_code("#" * (dialect.MAX_SOURCE_BYTES + 1))
    assert set(error_details(caught.value).violations) == {"program.code"}
    run = router.Run(
        iter(
            [
                agent_pb2.RunRequest(
                    start=agent_pb2.RunStart(program=program("1", client_functions="def f(:"))
                )
            ]
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in run:
            pass
    assert set(error_details(caught.value).violations) == {"program.client_functions"}
    assert run_result(await execute_code("21 * 2")) == 42


async def test_a_failed_workflow_fails_its_request_with_the_matching_status() -> None:
    def status(kind: Kind.ValueType) -> grpc.StatusCode:
        return workflow_failed("p", program_pb2.ProgramError(kind=kind)).code

    assert status(Kind.KIND_LIMIT) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status(Kind.KIND_TIMEOUT) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert status(Kind.KIND_CRASHED) == grpc.StatusCode.UNAVAILABLE
    assert status(Kind.KIND_INVALID_VALUE) == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_kill_at_the_hard_cpu_limit_is_a_timeout_not_memory() -> None:
    """A child may raise its soft CPU limit up to the hard one, where the kernel kills it with
    SIGKILL, the signal the out-of-memory killer also sends; the CPU time used tells them apart."""
    limits = RunLimits(cpu_seconds=1)
    killed = signal.SIGKILL.value  # a wait status: killed by the signal, no core
    at_limit = _signal_error(Exit(killed, cpu_seconds=2.0), limits)
    assert at_limit.kind == program_pb2.ProgramError.KIND_TIMEOUT
    assert "CPU limit" in at_limit.message
    assert _signal_error(Exit(killed, cpu_seconds=0.2), limits).kind == (
        program_pb2.ProgramError.KIND_MEMORY
    )


async def test_a_value_far_over_the_limit_does_not_stall_the_service(
    channel: grpc.aio.Channel,
) -> None:
    """Millions of tiny items are a few bytes of JSON each and several times that as protobuf;
    refused after about the limit's worth of work, they cost the service nothing (built in full
    on its event loop, three at once stalled it for many seconds: health checks went unanswered
    and concurrent runs timed out)."""
    async with HealthWatch(channel) as watch:
        floods = [served(channel, program("[{}] * 5_300_000")) for _ in range(3)]
        results = await asyncio.gather(*floods)
        ordinary = await served(channel, program(ORDINARY, wall=10))
    assert [r.error.kind for r in results] == [Kind.KIND_LIMIT] * 3
    assert values.py_from_value(ordinary.value) == 3
    watch.assert_serving()


async def test_lines_printed_before_a_message_too_large_to_send_are_kept(
    executor: Executor,
) -> None:
    code = "print('line 1')\nprint('line 2')\nprint('line 3')\nfetch('y' * 9_000_000)"
    result = await executor.run(program(code), host())
    assert result.error.kind == Kind.KIND_LIMIT, result.error
    printed = "\n".join(line.text for line in result.call_log.logs).split("\n")
    assert printed == ["line 1", "line 2", "line 3"]


async def test_a_zygote_whose_service_left_mid_spawn_exits_quietly() -> None:
    """A service that stops while the zygote forks (a replay refused at once, a shutdown) leaves
    the zygote nobody to tell of the child: it exits without a traceback on the user's terminal
    (`genmesh sandbox replay` showed one under load)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    process = await asyncio.create_subprocess_exec(
        *jail.zygote_command(theirs.fileno(), jail.JailLimits()),
        env=jail.zygote_environment(),
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        pass_fds=[theirs.fileno()],
    )
    theirs.close()
    with ours:
        ready = await asyncio.to_thread(ours.recv, 65536)
        assert json.loads(ready)["t"] == "ready"
        child_end, kept = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with child_end, kept:
            socket.send_fds(ours, [SPAWN], [child_end.fileno()])
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode(errors="replace")
    assert b"Traceback" not in err, err.decode(errors="replace")
