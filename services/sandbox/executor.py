"""Runs programs in jailed children, from the service's side (asyncio, no gRPC).

The executor validates and compiles a program (a program that breaks a rule never reaches a
child), takes a pre-forked child from the zygote, streams the child's host calls to a `Host` as
concurrent tasks, answers the child as results come back, and builds the call log. The wall-clock
deadline is enforced here with SIGKILL through a pidfd, so a runaway child cannot outlive it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import marshal
import math
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from google.protobuf import json_format, struct_pb2

from genmesh.sandbox import dialect, jail, wire
from genmesh.v1 import program_pb2

log = logging.getLogger(__name__)

Kind = program_pb2.ProgramError.Kind

_KINDS: dict[str, Kind.ValueType] = {
    "exception": Kind.KIND_EXCEPTION,
    "timeout": Kind.KIND_TIMEOUT,
    "memory": Kind.KIND_MEMORY,
    "limit": Kind.KIND_LIMIT,
    "violation": Kind.KIND_VIOLATION,
    "cancelled": Kind.KIND_CANCELLED,
    "crashed": Kind.KIND_CRASHED,
}


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
    memory_bytes: int = 1 << 30
    recursion: int = 1000

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
            memory_bytes=int(low(self.memory_bytes, asked.max_memory_bytes)),
            recursion=self.recursion,
        )


def py_from_value(value: struct_pb2.Value) -> Any:
    """A protobuf Value as plain Python, with integral numbers as ints (JSON has one number)."""
    return _ints(json_format.MessageToDict(value))


def _ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value


def value_from_py(value: Any) -> struct_pb2.Value:
    """Plain Python (JSON-compatible) as a protobuf Value; non-finite numbers become strings."""
    out = struct_pb2.Value()
    json_format.ParseDict(_finite(value), out)
    return out


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


def _duration(seconds: float) -> Any:
    from google.protobuf import duration_pb2

    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def error(kind: str, message: str, type_: str = "", line: int = 0) -> program_pb2.ProgramError:
    """A structured program failure."""
    return program_pb2.ProgramError(kind=_KINDS[kind], type=type_, message=message, line=line)


@dataclass
class Child:
    """A forked, jailed child waiting for its program."""

    pid: int
    pidfd: int
    sock: socket.socket
    exited: asyncio.Future[int]

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def close(self) -> None:
        self.kill()
        with contextlib.suppress(OSError):
            os.close(self.pidfd)
        self.sock.close()


PARENT_DIED = -1  # exit status reported for children whose parent (the zygote) died


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
        self._spawning: deque[asyncio.Future[tuple[int, int]]] = deque()
        self._exits: dict[int, asyncio.Future[int]] = {}

    @property
    def alive(self) -> bool:
        return self._sock is not None

    async def start(self) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "genmesh.sandbox.zygote",
            str(theirs.fileno()),
            json.dumps(asdict(self.limits)),
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
                self._exits[pid] = asyncio.get_running_loop().create_future()
                waiter = self._spawning.popleft()
                if waiter.done():
                    os.close(fds[0])
                else:
                    waiter.set_result((pid, fds[0]))
            elif kind == "exit":
                exited = self._exits.pop(int(message["pid"]), None)
                if exited is not None and not exited.done():
                    exited.set_result(int(message["status"]))

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
                exited.set_result(PARENT_DIED)
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(
                ZygoteGoneError("the sandbox parent process died at start-up")
            )
        self._spawning.clear()
        self._exits.clear()

    async def spawn(self) -> Child:
        if self._sock is None:
            raise ZygoteGoneError("the sandbox parent process is not running")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        waiter: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self._spawning.append(waiter)
        try:
            socket.send_fds(self._sock, [b'{"t":"spawn"}'], [theirs.fileno()])
        finally:
            theirs.close()
        pid, pidfd = await waiter
        return Child(pid, pidfd, ours, self._exits[pid])

    async def stop(self) -> None:
        if self._sock is not None:
            self._gone()
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


@dataclass
class _Run:
    """The state of one run on the service side."""

    started: float
    child: Child
    writer: asyncio.StreamWriter
    host: Host
    log: program_pb2.CallLog
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def since(self) -> float:
        return time.monotonic() - self.started


def _signal_error(status: int, killed_by_us: bool, limits: RunLimits) -> program_pb2.ProgramError:
    if killed_by_us:
        return error("timeout", f"wall-clock limit of {limits.wall_seconds:g}s reached")
    if status == PARENT_DIED:
        return error("crashed", "the sandbox parent process died during the run")
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            return error("timeout", f"CPU limit of {limits.cpu_seconds}s reached")
        if sig == signal.SIGSYS:
            return error("violation", "the program made a forbidden system call and was killed")
        if sig == signal.SIGKILL:
            return error("memory", "the program was killed (out of memory or over a limit)")
        return error("crashed", f"the sandbox child died on signal {signal.Signals(sig).name}")
    return error(
        "crashed", f"the sandbox child exited with status {os.waitstatus_to_exitcode(status)}"
    )


class Executor:
    """Compiles programs and runs each in a fresh jailed child."""

    def __init__(self, limits: RunLimits | None = None, *, require_isolation: bool = False) -> None:
        self.limits = limits or RunLimits()
        self.require_isolation = require_isolation
        self.zygote = Zygote(
            jail.JailLimits(
                cpu_seconds=self.limits.cpu_seconds, memory_bytes=self.limits.memory_bytes
            )
        )
        self._spare: asyncio.Task[Child] | None = None
        self._lock = asyncio.Lock()

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
        self._spare = asyncio.create_task(self.zygote.spawn())

    async def stop(self) -> None:
        if self._spare is not None:
            self._spare.cancel()
            with contextlib.suppress(BaseException):
                (await self._spare).close()
        await self.zygote.stop()

    async def _acquire(self) -> Child:
        async with self._lock:
            if not self.zygote.alive:
                log.error("sandbox parent process died; restarting it")
                await self.zygote.start()
                self._spare = None
            spare, self._spare = self._spare, asyncio.create_task(self.zygote.spawn())
        child: Child | None = None
        if spare is not None:
            with contextlib.suppress(ZygoteGoneError):
                child = await spare
        if child is None or child.exited.done():
            child = await self.zygote.spawn()
        return child

    async def run(
        self,
        program: program_pb2.Program,
        host: Host,
        *,
        server_functions: str = "",
        on_log: LogSink | None = None,
    ) -> program_pb2.ProgramResult:
        """Runs `program`; its host calls go to `host`. Never raises for program failures."""
        started = time.monotonic()
        call_log = program_pb2.CallLog(program=program, server_functions=server_functions)
        limits = self.limits.merged(program.limits)
        try:
            start = self._start_message(program, server_functions, limits)
        except dialect.DialectError as exc:
            kind, type_ = (
                ("exception", "SyntaxError")
                if exc.rule == "syntax"
                else ("violation", "DialectError")
            )
            rejected = error(kind, f"{exc.message} [rule: {exc.rule}]", type_, exc.line)
            return self._finish(call_log, started, None, rejected)
        child = await self._acquire()
        try:
            reader, writer = await asyncio.open_unix_connection(sock=child.sock)
            run = _Run(started, child, writer, host, call_log)
            writer.write(wire.encode(start))
            value, failure = await self._drive(run, reader, limits, on_log)
        finally:
            child.close()
        return self._finish(call_log, started, value, failure)

    @staticmethod
    def _start_message(
        program: program_pb2.Program, server_functions: str, limits: RunLimits
    ) -> dict[str, Any]:
        stubs = dialect.parse_stubs(program.client_functions, "<client_functions>")
        stubs += dialect.parse_stubs(server_functions, "<server_functions>")
        globals_ = json_format.MessageToDict(program.globals) if program.globals.fields else {}
        dialect.validate_globals(globals_)
        code = dialect.compile_module(program.code, dialect.PROGRAM_FILE, implicit_return=True)
        library = ""
        if program.library.strip():
            lib = dialect.compile_module(
                program.library, dialect.LIBRARY_FILE, implicit_return=False
            )
            library = base64.b64encode(marshal.dumps(lib.code)).decode()
        return {
            "t": "start",
            "program": base64.b64encode(marshal.dumps(code.code)).decode(),
            "library": library,
            "stubs": [s.to_json() for s in stubs],
            "ordered": list(program.ordered_functions),
            "globals": _ints(globals_),
            "limits": {
                "max_calls": limits.max_calls,
                "max_output_bytes": limits.max_output_bytes,
                "cpu_seconds": limits.cpu_seconds,
                "memory_bytes": limits.memory_bytes,
                "recursion": limits.recursion,
            },
        }

    async def _drive(
        self,
        run: _Run,
        reader: asyncio.StreamReader,
        limits: RunLimits,
        on_log: LogSink | None,
    ) -> tuple[Any, program_pb2.ProgramError | None]:
        killed = False
        try:
            async with asyncio.timeout(limits.wall_seconds):
                while True:
                    header = await reader.readexactly(wire.HEADER.size)
                    message = wire.decode(await reader.readexactly(wire.size(header)))
                    kind = message.get("t")
                    if kind == "call":
                        self._dispatch(run, message)
                    elif kind == "log":
                        line = program_pb2.LogLine(text=_finite(str(message.get("text", ""))))
                        line.at.CopyFrom(_duration(run.since()))
                        run.log.logs.append(line)
                        if on_log is not None:
                            await on_log(line)
                    elif kind == "done":
                        if "error" in message:
                            e = message["error"]
                            return None, error(
                                str(e.get("kind", "exception"))
                                if e.get("kind") in _KINDS
                                else "crashed",
                                _finite(str(e.get("message", ""))),
                                _finite(str(e.get("type", ""))),
                                int(e.get("line") or 0),
                            )
                        return message.get("value"), None
                    else:
                        raise wire.FrameError(f"unexpected message {kind!r}")
        except TimeoutError:
            killed = True
            run.child.kill()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except wire.FrameError as exc:
            run.child.kill()
            return None, error("violation", f"the child sent a malformed message: {exc}")
        except asyncio.CancelledError:
            run.child.kill()
            raise
        finally:
            for task in run.tasks:
                task.cancel()
        try:
            status = await asyncio.wait_for(asyncio.shield(run.child.exited), timeout=5)
        except (TimeoutError, ZygoteGoneError):
            return None, error("crashed", "the sandbox child vanished")
        return None, _signal_error(status, killed, limits)

    def _dispatch(self, run: _Run, message: dict[str, Any]) -> None:
        call = program_pb2.FunctionCall(
            call_id=int(message["id"]),
            name=str(message["name"]),
            source=_finite(str(message.get("source", ""))),
            line=int(message.get("line") or 0),
        )
        call.arguments.update(_finite(message.get("args") or {}))
        record = run.log.calls.add(call=call)
        record.started.CopyFrom(_duration(run.since()))
        began = time.monotonic()

        async def answer() -> None:
            try:
                result = await run.host.call(call)
            except Exception as exc:  # a host bug must not take the run down silently
                result = program_pb2.FunctionResult(error=f"host error: {exc}")
            result.call_id = call.call_id
            reply: dict[str, Any] = {"t": "result", "id": call.call_id}
            if result.WhichOneof("outcome") == "error":
                reply["error"] = result.error
            else:
                reply["value"] = py_from_value(result.value) if result.HasField("value") else None
            record.result.CopyFrom(result)
            record.duration.CopyFrom(_duration(time.monotonic() - began))
            with contextlib.suppress(ConnectionError, RuntimeError):
                run.writer.write(wire.encode(reply))

        task = asyncio.create_task(answer())
        run.tasks.add(task)
        task.add_done_callback(run.tasks.discard)

    @staticmethod
    def _finish(
        call_log: program_pb2.CallLog,
        started: float,
        value: Any,
        failure: program_pb2.ProgramError | None,
    ) -> program_pb2.ProgramResult:
        result = program_pb2.ProgramResult()
        if failure is not None:
            result.error.CopyFrom(failure)
            call_log.error.CopyFrom(failure)
        else:
            result.value.CopyFrom(value_from_py(value))
            call_log.result.CopyFrom(result.value)
        result.call_log.CopyFrom(call_log)
        result.duration.CopyFrom(_duration(time.monotonic() - started))
        return result
