"""Runs programs in jailed children, from the service's side (asyncio, no gRPC).

The executor takes a pre-forked child from the zygote and sends it the program's sources (the
child validates and compiles them itself, under the run's limits, so a huge or hostile program
costs the service's event loop nothing), streams the child's host calls to a `Host` as
concurrent tasks, answers the child as results come back, and builds the call log.

Every run ends with a result, whatever fails. The wall-clock deadline kills the child through its
pidfd; a watchdog a little later ends the run whatever the executor itself is waiting for; values
that cannot cross the wire end it with a coded error naming them; anything unexpected is logged
and reported as a crash. On every path the child is killed and its socket released before the
next run can reuse the file descriptor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from google.protobuf import duration_pb2, struct_pb2

from genmesh.runtime import values
from genmesh.runtime.errors import FieldViolation
from genmesh.sandbox import dialect, jail, wire
from genmesh.v1 import program_pb2

log = logging.getLogger(__name__)

Kind = program_pb2.ProgramError.Kind

# The child names the kind of its failure with a word (it has no protobuf); this is the one place
# those words are read. A word not listed here is a crash.
CHILD_KINDS: dict[str, Kind.ValueType] = {
    "exception": Kind.KIND_EXCEPTION,
    "timeout": Kind.KIND_TIMEOUT,
    "memory": Kind.KIND_MEMORY,
    "limit": Kind.KIND_LIMIT,
    "violation": Kind.KIND_VIOLATION,
    "value": Kind.KIND_INVALID_VALUE,
}

# How long after the wall-clock limit the watchdog ends a run that has not ended by itself.
WATCHDOG_GRACE = 2.0
# How long a child that hung up may take to report its exit status through the zygote.
EXIT_WAIT = 5.0
# Children forked, jailed and connected ahead of the runs that will take them: with two, runs
# that come back to back or in pairs find one ready.
SPARES = 2
# How long after a run ends the spare that replaces its child is forked: the fork and the jail
# then happen once the run's result is on its way to the caller rather than beside it.
REFILL_DELAY = 0.005
# Spares warm up (`child.prefault`: 2 to 3 ms of CPU that take about a millisecond of page faults
# off the next run's path) when they are topped up with no run under way and the last two runs
# started at least this far apart. Runs that come closer together, back to back or side by side,
# get cold spares: the warm-up would compete with them for the CPU, or hold up the next one.
WARM_INTERVAL = 0.015
# What asks a spare to warm up before its program comes.
WARM = wire.encode({"t": "warm"})
# Distinct server-function declarations kept parsed: one per router build in practice.
SERVER_STUB_CACHE = 8


class Host(Protocol):
    """Whoever answers a run's host calls (the router, a test, a replayed call log)."""

    async def call(self, call: program_pb2.FunctionCall) -> program_pb2.FunctionResult: ...


LogSink = Callable[[program_pb2.LogLine], Awaitable[None]]


@dataclass(frozen=True)
class RunLimits:
    """The service's ceilings for one run; a program's own limits can only lower them."""

    wall_seconds: float = 30.0
    cpu_seconds: int = 10
    max_calls: int = 1000
    max_output_bytes: int = 1 << 20
    max_output_lines: int = 10_000
    memory_bytes: int = 1 << 30
    recursion: int = 1000
    # The call log (program, calls, results, printed output, result) travels in the run's last
    # message, which must stay under the services' 16 MiB message limit.
    max_record_bytes: int = 12 << 20

    def merged(self, asked: program_pb2.Limits) -> RunLimits:
        def low(mine: float, theirs: float) -> float:
            return min(mine, theirs) if theirs > 0 else mine

        return RunLimits(
            wall_seconds=low(self.wall_seconds, asked.wall_time.ToNanoseconds() / 1e9),
            cpu_seconds=max(
                1, math.ceil(low(self.cpu_seconds, asked.cpu_time.ToNanoseconds() / 1e9))
            ),
            max_calls=int(low(self.max_calls, asked.max_calls)),
            max_output_bytes=int(low(self.max_output_bytes, asked.max_output_bytes)),
            max_output_lines=int(low(self.max_output_lines, asked.max_output_lines)),
            memory_bytes=int(low(self.memory_bytes, asked.max_memory_bytes)),
            recursion=self.recursion,
            max_record_bytes=self.max_record_bytes,
        )


def program_violations(program: program_pb2.Program) -> list[FieldViolation]:
    """What makes a program unrunnable before any child sees it: a source over the size cap, or
    globals that cannot cross the wire. The service refuses these with INVALID_ARGUMENT."""
    found = []
    for name in ("code", "library", "client_functions"):
        size = len(getattr(program, name).encode("utf-8"))
        if size > dialect.MAX_SOURCE_BYTES:
            found.append(
                FieldViolation(
                    f"program.{name}",
                    f"{size} bytes is more than the limit of {dialect.MAX_SOURCE_BYTES}",
                )
            )
    try:
        values.py_from_struct(program.globals, "program.globals")
    except values.InvalidValueError as exc:
        found.append(FieldViolation(exc.path, exc.problem))
    return found


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def error(
    kind: Kind.ValueType, message: str, type_: str = "", line: int = 0, rule: str = ""
) -> program_pb2.ProgramError:
    """A structured program failure."""
    return program_pb2.ProgramError(kind=kind, type=type_, message=message, line=line, rule=rule)


def uncrossable(exc: values.InvalidValueError, where: str = "") -> program_pb2.ProgramError:
    """The failure of a run whose value could not cross the wire: too large is a limit, anything
    else an invalid value. The message names the value and the part of it."""
    kind = (
        Kind.KIND_LIMIT if isinstance(exc, values.ValueTooLargeError) else Kind.KIND_INVALID_VALUE
    )
    return error(kind, f"{where}: {exc}" if where else str(exc), type(exc).__name__)


@dataclass(eq=False)
class Child:
    """A forked, jailed child waiting for its program, and everything of it the service holds.

    `close` releases them in one order on every path: the child is killed, the transport stops
    watching the socket (an abort, so no buffered write keeps it alive), and only then is the
    socket closed. Closing the socket under a live transport left the event loop watching a file
    descriptor number that the next child's socket reused, and that child's messages were never
    read."""

    pid: int
    pidfd: int
    sock: socket.socket
    exited: asyncio.Future[Exit]
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    warm: bool = False

    def warm_up(self) -> None:
        """Asks the connected child, once, to warm up before its program comes."""
        if not self.warm and self.writer is not None:
            self.writer.write(WARM)
            self.warm = True

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The stream to the child, opened on the first call; `close` releases it."""
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_unix_connection(sock=self.sock)
        return self.reader, self.writer

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def close(self) -> None:
        self.kill()
        if self.writer is not None:
            self.writer.transport.abort()
            self.reader = self.writer = None
        self.sock.close()
        if self.pidfd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = -1


PARENT_DIED = -1  # exit status reported for children whose parent (the zygote) died


class Exit(NamedTuple):
    """How a child ended: its wait status and the CPU time it used (which tells a kill at the
    hard CPU limit from one by the kernel's out-of-memory killer: both are a SIGKILL)."""

    status: int
    cpu_seconds: float = 0.0


# A spawned child as the zygote reports it: pid, pidfd and the future of its exit status.
_Spawned = tuple[int, int, asyncio.Future[Exit]]
# The zygote's request for a child; the child's socket travels with it.
SPAWN = json.dumps({"t": "spawn"}).encode()


class ZygoteGoneError(Exception):
    """The pre-warmed parent died; it is restarted on the next run."""


class Zygote:
    """The service's handle on the pre-warmed parent process."""

    def __init__(self, limits: jail.JailLimits) -> None:
        self.limits = limits
        self.layers: list[dict[str, Any]] = []
        self.process: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        self._ready: asyncio.Future[list[dict[str, Any]]] | None = None
        self._spawning: deque[asyncio.Future[_Spawned]] = deque()
        self._exits: dict[int, asyncio.Future[Exit]] = {}

    @property
    def alive(self) -> bool:
        return self._sock is not None

    async def start(self) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.process = await asyncio.create_subprocess_exec(
            *jail.zygote_command(theirs.fileno(), self.limits),
            env=jail.zygote_environment(),
            cwd="/",
            stdin=asyncio.subprocess.DEVNULL,
            pass_fds=[theirs.fileno()],
        )
        theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self._ready = loop.create_future()
        loop.add_reader(ours.fileno(), self._readable)
        self.layers = await asyncio.wait_for(self._ready, timeout=120)
        return self.layers

    def _readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self._sock, 65536, 1)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:
                self._gone()
                return
            message = json.loads(data)
            kind = message["t"]
            if kind == "ready" and self._ready and not self._ready.done():
                self._ready.set_result(message["layers"])
            elif kind == "spawned":
                pid = int(message["pid"])
                status = self._exits[pid] = asyncio.get_running_loop().create_future()
                waiter = self._spawning.popleft()
                if waiter.done():
                    os.close(fds[0])
                else:
                    waiter.set_result((pid, fds[0], status))
            elif kind == "exit":
                exited = self._exits.pop(int(message["pid"]), None)
                if exited is not None and not exited.done():
                    exited.set_result(Exit(int(message["status"]), float(message["cpu"])))

    def _gone(self) -> None:
        if self._sock is None:
            return
        asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        for waiter in self._spawning:
            if not waiter.done():
                waiter.set_exception(ZygoteGoneError("the sandbox parent process died"))
        for exited in self._exits.values():
            if not exited.done():
                exited.set_result(Exit(PARENT_DIED))
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(
                ZygoteGoneError("the sandbox parent process died at start-up")
            )
        self._spawning.clear()
        self._exits.clear()

    async def spawn(self) -> Child:
        """A new jailed child, waiting for its program."""
        if self._sock is None:
            raise ZygoteGoneError("the sandbox parent process is not running")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            socket.send_fds(self._sock, [SPAWN], [theirs.fileno()])
        except OSError as exc:
            ours.close()
            raise ZygoteGoneError(f"the sandbox parent process cannot be reached: {exc}") from None
        finally:
            theirs.close()
        waiter: asyncio.Future[_Spawned] = asyncio.get_running_loop().create_future()
        self._spawning.append(waiter)
        try:
            pid, pidfd, exited = await waiter
        except BaseException:
            ours.close()  # the child reads end-of-file and exits
            raise
        return Child(pid, pidfd, ours, exited)

    async def stop(self) -> None:
        if self._sock is not None:
            self._gone()
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


@dataclass(eq=False)
class _Run:
    """One run on the service side: its child, host and call log, and what it has used."""

    started: float
    child: Child
    writer: asyncio.StreamWriter
    host: Host
    log: program_pb2.CallLog
    limits: RunLimits
    record_bytes: int = 0
    output_bytes: int = 0
    output_lines: int = 0
    failure: program_pb2.ProgramError | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def since(self) -> float:
        return time.monotonic() - self.started

    def stop(self, failure: program_pb2.ProgramError) -> None:
        """Ends the run with `failure` (the first one stands) and kills the child."""
        if self.failure is None:
            self.failure = failure
        self.child.kill()

    def charge(self, size: int) -> None:
        """Counts `size` bytes into the call log, ending the run when it outgrows its cap."""
        self.record_bytes += size
        if self.record_bytes > self.limits.max_record_bytes:
            self.stop(
                error(
                    Kind.KIND_LIMIT,
                    f"the run's call log (calls, results and output) grew past "
                    f"{self.limits.max_record_bytes} bytes",
                )
            )

    def task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("answering a host call failed", exc_info=exc)
            self.stop(error(Kind.KIND_CRASHED, "the sandbox failed while answering a host call"))


def _signal_error(ended: Exit, limits: RunLimits) -> program_pb2.ProgramError:
    status = ended.status
    if status == PARENT_DIED:
        return error(Kind.KIND_CRASHED, "the sandbox parent process died during the run")
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU or (
            sig == signal.SIGKILL and ended.cpu_seconds >= limits.cpu_seconds
        ):
            return error(Kind.KIND_TIMEOUT, f"CPU limit of {limits.cpu_seconds}s reached")
        if sig == signal.SIGSYS:
            return error(
                Kind.KIND_VIOLATION, "the program made a forbidden system call and was killed"
            )
        if sig == signal.SIGKILL:
            return error(Kind.KIND_MEMORY, "the program was killed (out of memory or over a limit)")
        if sig == signal.SIGSEGV:
            # Some C paths of CPython 3.11 have no recursion check: advancing iterators nested
            # hundreds of thousands deep (map, zip, itertools.chain...) or hashing nested tuples
            # overflows the C stack. Capping every such nesting would tax ordinary code and still
            # miss some, while the jail contains the crash, so it is reported as what it most
            # likely is: the program over a limit.
            return error(
                Kind.KIND_LIMIT,
                "the program overflowed the C stack (objects nested too deeply for C code, such "
                "as iterators wrapping iterators) and was killed with SIGSEGV",
            )
        return error(
            Kind.KIND_CRASHED, f"the sandbox child died on signal {signal.Signals(sig).name}"
        )
    return error(
        Kind.KIND_CRASHED,
        f"the sandbox child exited with status {os.waitstatus_to_exitcode(status)}",
    )


class ServerStubs:
    """The server functions' declarations as the child takes them (JSON specs), parsed once per
    text. The router sends the same declarations with every run, and parsing them again in each
    cold child cost about a millisecond of every run's time. They come from the router, not the
    program; a text not seen before is parsed in a thread, so a large one never stalls the loop."""

    def __init__(self) -> None:
        self._parsed: dict[str, list[dict[str, Any]]] = {}

    async def specs(self, source: str) -> list[dict[str, Any]]:
        """The specs of `source`'s stubs; raises DialectError for a declaration that is not a
        stub and FrameError for one over the source size limit."""
        parsed = self._parsed.get(source)
        if parsed is None:
            size = len(source.encode("utf-8"))
            if size > dialect.MAX_SOURCE_BYTES:
                raise wire.FrameError(f"the server functions are {size} bytes")
            stubs = await asyncio.to_thread(dialect.parse_stubs, source, "<server_functions>")
            parsed = [stub.to_json() for stub in stubs]
            if len(self._parsed) >= SERVER_STUB_CACHE:
                del self._parsed[next(iter(self._parsed))]
            self._parsed[source] = parsed
        return parsed


def _int32(value: Any) -> int:
    """An int field of a child's message; anything else makes the message malformed."""
    if type(value) is not int or not 0 <= value < 2**31:
        raise wire.FrameError(f"expected a small non-negative integer, got {value!r:.40}")
    return value


class Executor:
    """Runs each program in a fresh jailed child."""

    def __init__(self, limits: RunLimits | None = None, *, require_isolation: bool = False) -> None:
        self.limits = limits or RunLimits()
        self.require_isolation = require_isolation
        self.zygote = Zygote(
            jail.JailLimits(
                cpu_seconds=self.limits.cpu_seconds, memory_bytes=self.limits.memory_bytes
            )
        )
        self._spares: deque[asyncio.Task[Child]] = deque()
        self._running = 0  # runs under way: spares warm up only when there are none
        self._last_start = -math.inf
        self._interval = math.inf  # between the last two runs' starts
        self._lock = asyncio.Lock()
        self._server_stubs = ServerStubs()

    @property
    def layers(self) -> list[dict[str, Any]]:
        return self.zygote.layers

    def missing_layers(self) -> list[dict[str, Any]]:
        return [layer for layer in self.zygote.layers if not layer["active"]]

    async def start(self) -> None:
        """Starts the zygote and says loudly which isolation layers are missing."""
        await self.zygote.start()
        missing = self.missing_layers()
        for layer in missing:
            log.error(
                "sandbox isolation layer %s is NOT in force: %s", layer["name"], layer["detail"]
            )
        if missing and self.require_isolation:
            await self.zygote.stop()
            names = ", ".join(layer["name"] for layer in missing)
            raise RuntimeError(f"sandbox isolation required but unavailable: {names}")
        self._refill()

    async def stop(self) -> None:
        await self._drop_spares()
        await self.zygote.stop()

    def _refill(self, *, cold: bool = False) -> None:
        """Tops the spares up. Unless `cold`, the new spares and the waiting ones warm up too if
        runs are sparse (see WARM_INTERVAL)."""
        warm = not cold and self._sparse()
        while self.zygote.alive and len(self._spares) < SPARES:
            self._spares.append(asyncio.create_task(self._prepare(warm=warm)))
        if warm:
            for spare in self._spares:
                if spare.done() and not spare.cancelled() and spare.exception() is None:
                    spare.result().warm_up()

    async def _drop_spares(self) -> None:
        while self._spares:
            spare = self._spares.popleft()
            spare.cancel()
            with contextlib.suppress(BaseException):
                (await spare).close()

    async def _prepare(self, *, warm: bool) -> Child:
        """A new child, connected: what a run needs of it before its program can go out; a
        `warm` one warms up if still no run is under way."""
        child = await self.zygote.spawn()
        try:
            await child.connect()
        except BaseException:
            child.close()
            raise
        if warm and self._sparse():
            child.warm_up()
        return child

    def _sparse(self) -> bool:
        """Whether spares may warm up now: no run is under way, and runs come far apart."""
        return not self._running and self._interval >= WARM_INTERVAL

    async def _acquire(self) -> Child:
        async with self._lock:
            if not self.zygote.alive:
                log.error("sandbox parent process died; restarting it")
                await self._drop_spares()
                await self.zygote.start()
            if len(self._spares) < SPARES:  # runs come faster than spares are replaced
                self._refill(cold=True)
            spare = self._spares.popleft() if self._spares else None
        child = await _take(spare) if spare is not None else None
        if child is None or child.exited.done():
            if child is not None:
                child.close()
            child = await self._prepare(warm=False)  # the run is waiting: it takes the faults
        return child

    async def run(
        self,
        program: program_pb2.Program,
        host: Host,
        *,
        server_functions: str = "",
        on_log: LogSink | None = None,
    ) -> program_pb2.ProgramResult:
        """Runs `program`; its host calls go to `host`. Every failure, expected or not, comes back
        as the result's error; only cancellation propagates, after the child is killed."""
        started = time.monotonic()
        call_log = program_pb2.CallLog(program=program, server_functions=server_functions)
        limits = self.limits.merged(program.limits)
        value: struct_pb2.Value | None = None
        failure: program_pb2.ProgramError | None
        watchdog = asyncio.timeout(limits.wall_seconds + WATCHDOG_GRACE)
        self._interval, self._last_start = started - self._last_start, started
        self._running += 1
        try:
            async with watchdog:
                value, failure = await self._run(
                    program, host, server_functions, limits, on_log, call_log, started
                )
        except Exception as exc:
            if isinstance(exc, TimeoutError) and watchdog.expired():
                failure = error(
                    Kind.KIND_TIMEOUT,
                    f"wall-clock limit of {limits.wall_seconds:g}s reached; the watchdog ended "
                    "the run",
                )
            else:
                log.exception("a sandbox run failed unexpectedly")
                failure = error(
                    Kind.KIND_CRASHED,
                    "the sandbox failed while running the program (the service logged why)",
                )
        finally:
            self._running -= 1
        return self._finish(call_log, started, value, failure)

    async def _run(
        self,
        program: program_pb2.Program,
        host: Host,
        server_functions: str,
        limits: RunLimits,
        on_log: LogSink | None,
        call_log: program_pb2.CallLog,
        started: float,
    ) -> tuple[struct_pb2.Value | None, program_pb2.ProgramError | None]:
        try:
            server_stubs = await self._server_stubs.specs(server_functions)
            frame = wire.encode(self._start_message(program, server_stubs, limits))
        except dialect.DialectError as exc:
            message = f"the server functions cannot be declared: {exc.message}"
            return None, error(Kind.KIND_VIOLATION, message, "DialectError", exc.line, exc.rule)
        except values.InvalidValueError as exc:
            return None, uncrossable(exc)
        except wire.FrameError as exc:
            return None, error(Kind.KIND_LIMIT, f"the program is too large to start: {exc}")
        child = await self._acquire()
        try:
            reader, writer = await child.connect()
            run = _Run(started, child, writer, host, call_log, limits)
            run.charge(call_log.ByteSize())
            writer.write(frame)
            return await self._drive(run, reader, on_log)
        finally:
            child.close()
            asyncio.get_running_loop().call_later(REFILL_DELAY, self._refill)

    @staticmethod
    def _start_message(
        program: program_pb2.Program, server_stubs: list[dict[str, Any]], limits: RunLimits
    ) -> dict[str, Any]:
        return {
            "t": "start",
            "source": {
                "code": program.code,
                "library": program.library,
                "client_functions": program.client_functions,
            },
            "server_stubs": server_stubs,
            "ordered": list(program.ordered_functions),
            "globals": values.py_from_struct(program.globals, "globals"),
            "limits": {
                "max_calls": limits.max_calls,
                "max_output_bytes": limits.max_output_bytes,
                "max_output_lines": limits.max_output_lines,
                "cpu_seconds": limits.cpu_seconds,
                "memory_bytes": limits.memory_bytes,
                "recursion": limits.recursion,
            },
        }

    async def _drive(
        self, run: _Run, reader: asyncio.StreamReader, on_log: LogSink | None
    ) -> tuple[struct_pb2.Value | None, program_pb2.ProgramError | None]:
        """Reads the child until it is done, hangs up or runs out of time."""
        deadline = run.started + run.limits.wall_seconds
        try:
            async with asyncio.timeout(deadline - time.monotonic()):
                while run.failure is None:
                    header = await reader.readexactly(wire.HEADER.size)
                    message = wire.decode(await reader.readexactly(wire.size(header)))
                    kind = message.get("t")
                    if kind == "call":
                        self._dispatch(run, message)
                    elif kind == "log":
                        await self._log(run, message, on_log)
                    elif kind == "done":
                        return self._done(run, message)
                    else:
                        raise wire.FrameError(f"unexpected message {kind!r:.40}")
        except TimeoutError:
            run.stop(
                error(
                    Kind.KIND_TIMEOUT, f"wall-clock limit of {run.limits.wall_seconds:g}s reached"
                )
            )
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the child hung up: its exit status says why
        except wire.FrameError as exc:
            run.stop(error(Kind.KIND_VIOLATION, f"the child sent a malformed message: {exc}"))
        finally:
            for task in list(run.tasks):
                task.cancel()
        if run.failure is not None:
            return None, run.failure
        try:
            ended = await asyncio.wait_for(asyncio.shield(run.child.exited), EXIT_WAIT)
        except TimeoutError:
            return None, error(Kind.KIND_CRASHED, "the sandbox child vanished")
        return None, _signal_error(ended, run.limits)

    async def _log(self, run: _Run, message: dict[str, Any], on_log: LogSink | None) -> None:
        """Printed lines from the child (a batch, joined by newlines), counted against the caps
        again here: a child whose runtime was subverted does not enforce them."""
        text = message.get("text")
        if not isinstance(text, str):
            raise wire.FrameError("log text is not a string")
        text = values.display(text)
        run.output_lines += text.count("\n") + 1
        run.output_bytes += len(text.encode("utf-8"))
        if run.output_lines > run.limits.max_output_lines:
            run.stop(
                error(Kind.KIND_LIMIT, f"more than {run.limits.max_output_lines} lines of output")
            )
            return
        if run.output_bytes > run.limits.max_output_bytes:
            run.stop(
                error(Kind.KIND_LIMIT, f"more than {run.limits.max_output_bytes} bytes of output")
            )
            return
        line = program_pb2.LogLine(text=text, at=_duration(run.since()))
        run.log.logs.append(line)
        run.charge(line.ByteSize())
        if on_log is not None:
            await on_log(line)

    @staticmethod
    def _done(
        run: _Run, message: dict[str, Any]
    ) -> tuple[struct_pb2.Value | None, program_pb2.ProgramError | None]:
        if "error" in message:
            failure = message["error"]
            if not isinstance(failure, dict):
                raise wire.FrameError("the error is not an object")
            return None, error(
                CHILD_KINDS.get(str(failure.get("kind")), Kind.KIND_CRASHED),
                values.display(str(failure.get("message", ""))),
                values.display(str(failure.get("type", ""))),
                _int32(failure.get("line", 0)),
                values.display(str(failure.get("rule", ""))),
            )
        try:
            value = values.value_from_py(message.get("value"), "result")
        except values.InvalidValueError as exc:
            return None, uncrossable(exc)
        run.charge(2 * value.ByteSize())  # it is both the result and the call log's copy
        return (None, run.failure) if run.failure is not None else (value, None)

    def _dispatch(self, run: _Run, message: dict[str, Any]) -> None:
        args = message.get("args")
        if not isinstance(args, dict):
            raise wire.FrameError("call arguments are not an object")
        call = program_pb2.FunctionCall(
            call_id=_int32(message.get("id")),
            name=values.display(str(message.get("name", ""))),
            source=values.display(str(message.get("source", ""))),
            line=_int32(message.get("line", 0)),
        )
        try:
            call.arguments.CopyFrom(values.struct_from_py(args, "arguments"))
        except values.InvalidValueError as exc:
            run.stop(uncrossable(exc, f"call {call.call_id} to {call.name}()"))
            return
        record = run.log.calls.add(call=call, started=_duration(run.since()))
        run.charge(record.ByteSize())
        began = time.monotonic()

        async def answer() -> None:
            try:
                result = await run.host.call(call)
            except Exception as exc:  # a host bug fails this call, not the run
                log.warning("host function %s failed", call.name, exc_info=True)
                result = program_pb2.FunctionResult(error=f"host error: {exc}")
            result.call_id = call.call_id
            frame, result = self._reply(result)
            record.result.CopyFrom(result)
            record.duration.CopyFrom(_duration(time.monotonic() - began))
            run.charge(record.result.ByteSize())
            with contextlib.suppress(ConnectionError, RuntimeError):
                run.writer.write(frame)

        task = asyncio.create_task(answer())
        run.tasks.add(task)
        task.add_done_callback(run.task_done)

    @staticmethod
    def _reply(
        result: program_pb2.FunctionResult,
    ) -> tuple[bytes, program_pb2.FunctionResult]:
        """The child's frame for a host's answer, and the answer as the call log keeps it. An
        answer that cannot cross fails the call, in the log too, so a replay fails it alike."""
        reply: dict[str, Any] = {"t": "result", "id": result.call_id}
        try:
            if result.WhichOneof("outcome") == "error":
                reply["error"] = result.error
            else:
                reply["value"] = (
                    values.py_from_value(result.value, "result")
                    if result.HasField("value")
                    else None
                )
            return wire.encode(reply), result
        except (values.InvalidValueError, wire.FrameError) as exc:
            failed = program_pb2.FunctionResult(
                call_id=result.call_id, error=f"the host's answer cannot cross: {exc}"
            )
            return wire.encode({**reply, "error": failed.error}), failed

    @staticmethod
    def _finish(
        call_log: program_pb2.CallLog,
        started: float,
        value: struct_pb2.Value | None,
        failure: program_pb2.ProgramError | None,
    ) -> program_pb2.ProgramResult:
        result = program_pb2.ProgramResult()
        if failure is not None:
            result.error.CopyFrom(failure)
            call_log.error.CopyFrom(failure)
        elif value is not None:
            result.value.CopyFrom(value)
            call_log.result.CopyFrom(value)
        result.call_log.CopyFrom(call_log)
        result.duration.CopyFrom(_duration(time.monotonic() - started))
        return result


async def _take(spare: asyncio.Task[Child]) -> Child | None:
    """The pre-forked child, if its spawn worked; released if the run is cancelled meanwhile."""
    try:
        return await spare
    except ZygoteGoneError:
        return None
    except asyncio.CancelledError:
        if spare.done() and not spare.cancelled() and spare.exception() is None:
            spare.result().close()
        raise
