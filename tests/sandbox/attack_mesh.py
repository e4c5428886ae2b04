"""Runs the attack corpus (tests/sandbox/attacks.py) against a real mesh and judges each attack.

The mesh is what production runs: an echo text service, a sandbox service and a router, each a
`genmesh serve` process on loopback with API keys, programs sent to the router's AgentService
(Execute, or Run when the client answers host calls). Canary secrets are planted where an escaped
program would look: the sandbox service's environment (its API key, the router's internal key,
a provider secret), a secrets file the sandbox service reads (named by its config file) and the
router's environment. An attack is contained when:

- its run ends, with a ProgramError, a value or a status that is not a crash, within its wall
  clock limit plus GRACE_SECONDS (the client gives up there and calls it hung);
- no canary, in any form `attacks.leaks` knows, appears in anything the client sees or in either
  service's log, and none of the attack's forbidden sights appears in what the client sees;
- a value it returns equals `Attack.expect` when the attack sets one, and every host call's
  displayed source starts with the function's own name;
- `Attack.after`, run before and after it, ends the same way both times;
- the sandbox service and the router answered every health check during the run SERVING, and
  the two ordinary programs (attacks.PROBE) run right after it (a hung one still open) return
  what they returned before any attack, each within PROBE_SECONDS.

A run that harms the next leaves the mesh restarted, so every attack is judged on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genmesh.runtime.channel import key_interceptors
from genmesh.v1 import agent_pb2, agent_pb2_grpc, program_pb2
from tests.sandbox.attacks import (
    HOST_FUNCTIONS,
    NOTHING,
    PROBE,
    ROUTER_SECRET_VARIABLES,
    Attack,
    Client,
    leaks,
    sighted,
)
from tests.support import API_KEY, INTERNAL_KEY, ServiceProcess, echo_binding, router_config

GRACE_SECONDS = 4.0
PROBE_SECONDS = 5.0
# The ordinary runs after each attack: two, as the sandbox forks the next run's child ahead, so a
# descriptor a failed run leaked is reused by the run after next.
NEXT_RUNS = ("next", "second next")
# The sandbox service's own ceilings, so an attack that asks for no limit still ends.
SERVICE_WALL_SECONDS = 10.0
SERVICE_CPU_SECONDS = 5
REPLAY_STARTUP_SECONDS = 10.0
HEALTH_PERIOD_SECONDS = 0.25
HEALTH_DEADLINE_SECONDS = 5.0
CRASHES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
TRACEBACK = "Traceback (most recent call last)"
RUN_METHOD = "/genmesh.v1.AgentService/Run"


def strings(value: Any) -> Iterator[str]:
    """Every string in a JSON-like value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def plain(message: struct_pb2.Value | struct_pb2.Struct) -> Any:
    """A protobuf JSON value as plain Python."""
    return json_format.MessageToDict(message)


def wire(value: Any) -> struct_pb2.Value:
    """Plain Python as a protobuf JSON value."""
    return json_format.ParseDict(value, struct_pb2.Value())


def _varint(number: int) -> bytes:
    out = bytearray()
    while number > 0x7F:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def deep_answer(call_id: int, depth: int) -> bytes:
    """A RunRequest answering `call_id` with a list nested `depth` deep, encoded by hand: the
    protobuf library refuses to build a message nested beyond its parse limit."""
    value = _field(3, b"bottom")  # Value.string_value
    for _ in range(depth):
        value = _field(6, _field(1, value))  # Value.list_value, ListValue.values
    result = program_pb2.FunctionResult(call_id=call_id).SerializeToString() + _field(2, value)
    return _field(2, result)  # RunRequest.result


def program_of(attack: Attack) -> program_pb2.Program:
    program = program_pb2.Program(
        code=attack.code,
        client_functions=attack.client_functions,
        library=attack.library,
    )
    if attack.globals:
        program.globals.update(dict(attack.globals))
    limits = attack.limits
    if limits.wall_ms is not None:
        program.limits.wall_time.FromMilliseconds(limits.wall_ms)
    if limits.cpu_ms is not None:
        program.limits.cpu_time.FromMilliseconds(limits.cpu_ms)
    if limits.memory_bytes is not None:
        program.limits.max_memory_bytes = limits.memory_bytes
    if limits.output_bytes is not None:
        program.limits.max_output_bytes = limits.output_bytes
    if limits.calls is not None:
        program.limits.max_calls = limits.calls
    return program


def bound_seconds(attack: Attack) -> float:
    """How long the attack's run may take before it counts as hung."""
    wall = attack.limits.wall_ms / 1000 if attack.limits.wall_ms else SERVICE_WALL_SECONDS
    return wall + GRACE_SECONDS


@dataclass
class Outcome:
    """How one run ended, and everything its client saw."""

    ended: bool
    seconds: float
    result: program_pb2.ProgramResult | None = None
    status: grpc.StatusCode | None = None
    details: str = ""
    streamed: list[str] = field(default_factory=list)

    def texts(self) -> list[str]:
        """What the client can read: the value, the error, logs, host calls and their answers,
        and anything streamed or put in a status (the program's own code is left out)."""
        seen = [self.details, *self.streamed]
        result = self.result
        if result is None:
            return seen
        if result.HasField("value"):
            seen += strings(plain(result.value))
        seen += [result.error.type, result.error.message]
        for line in result.call_log.logs:
            seen.append(line.text)
        for record in result.call_log.calls:
            seen += [record.call.source, *strings(plain(record.call.arguments))]
            seen.append(record.result.error)
            if record.result.HasField("value"):
                seen += strings(plain(record.result.value))
        return seen

    def fingerprint(self) -> Any:
        """What `Attack.after` compares: the value, the error or the status."""
        if not self.ended:
            return "hung"
        if self.result is None:
            return ("status", self.status)
        if self.result.HasField("error"):
            error = self.result.error
            return ("error", error.kind, error.type, error.message)
        return ("value", plain(self.result.value))

    def value(self) -> Any:
        if self.result is None or self.result.HasField("error"):
            return None
        return plain(self.result.value)

    def describe(self) -> str:
        if not self.ended:
            return f"no end within {self.seconds:.1f}s"
        if self.result is None:
            return f"status {self.status.name if self.status else '?'}: {self.details[:200]}"
        if self.result.HasField("error"):
            error = self.result.error
            return f"error {error.type}: {error.message[:200]}"
        return f"value {str(self.value())[:200]}"


class Canaries:
    """Random secrets planted for one mesh, by where they are planted."""

    def __init__(self) -> None:
        def canary(name: str) -> str:
            return f"canary-{name}-{secrets.token_hex(12)}"

        self.sandbox_env = {
            "GENMESH_API_KEY": canary("sandbox-key"),
            "GENMESH_SECRET_UPSTREAM": canary("upstream"),
        }
        self.router_env = {name: canary("router") for name in ROUTER_SECRET_VARIABLES}
        self.file = canary("file")
        self.by_name = {
            **self.sandbox_env,
            **self.router_env,
            "secrets file": self.file,
            "GENMESH_INTERNAL_KEY": INTERNAL_KEY,
            "router GENMESH_API_KEY": API_KEY,
        }

    def found(self, texts: list[str]) -> list[str]:
        """The names of the canaries any of `texts` gives away."""
        found = []
        for name, secret in self.by_name.items():
            forms = leaks(secret)
            if any(form in text for text in texts for form in forms):
                found.append(name)
        return found


class Mesh:
    """An echo text service, a sandbox service and a router, with canaries planted."""

    def __init__(self, ttt_address: str) -> None:
        self.ttt_address = ttt_address
        self.canaries = Canaries()
        self.dir = Path(tempfile.mkdtemp(prefix="genmesh-attacks-"))
        self.secrets_file = self.dir / "secrets.yaml"
        self.secrets_file.write_text(
            yaml.safe_dump({"providers": {"upstream": self.canaries.file}})
        )
        self.sandbox: ServiceProcess | None = None
        self.router: ServiceProcess | None = None
        self._agent_channel: grpc.aio.Channel | None = None
        self._health_channel: grpc.aio.Channel | None = None
        self._log_offsets: dict[Path, int] = {}
        self.expected_probe: Any = None

    # -- processes

    def start(self) -> None:
        self.sandbox = ServiceProcess(
            "sandbox",
            {
                "wall_seconds": SERVICE_WALL_SECONDS,
                "cpu_seconds": SERVICE_CPU_SECONDS,
                "secrets_file": str(self.secrets_file),
                "shutdown_grace_seconds": 0,
            },
            self.canaries.sandbox_env,
        )
        self.router = ServiceProcess(
            "router",
            router_config(
                [echo_binding(self.ttt_address)],
                sandbox_address=self.sandbox.address,
                shutdown_grace_seconds=0,
            ),
            self.canaries.router_env,
        )

    def stop(self) -> None:
        for process in (self.router, self.sandbox):
            if process is not None:
                _kill(process)
        self.router = self.sandbox = None

    async def close(self) -> None:
        await self._close_channels()
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    async def restart(self) -> None:
        """A fresh sandbox service and router, after an attack that harmed them."""
        await self._close_channels()
        self.stop()
        await asyncio.to_thread(self.start)
        self._log_offsets.clear()

    @property
    def sandbox_env(self) -> dict[str, str]:
        """The environment the sandbox service runs with (as a replaying user's would be)."""
        assert self.sandbox is not None
        return {
            **os.environ,
            **self.canaries.sandbox_env,
            "GENMESH_CONFIG": str(self.sandbox.dir / "mesh.yaml"),
            "GENMESH_INTERNAL_KEY": INTERNAL_KEY,
        }

    def new_service_logs(self) -> list[str]:
        """What both services logged since the last look."""
        texts = []
        for process in (self.sandbox, self.router):
            if process is None:
                continue
            path = process.log_path
            with path.open("rb") as log:
                log.seek(self._log_offsets.get(path, 0))
                data = log.read()
            self._log_offsets[path] = self._log_offsets.get(path, 0) + len(data)
            texts.append(data.decode(errors="replace"))
        return texts

    # -- channels

    async def _close_channels(self) -> None:
        for channel in (self._agent_channel, self._health_channel):
            if channel is not None:
                await channel.close()
        self._agent_channel = self._health_channel = None

    @property
    def channel(self) -> grpc.aio.Channel:
        """The client's channel to the router."""
        assert self.router is not None
        if self._agent_channel is None:
            self._agent_channel = grpc.aio.insecure_channel(
                self.router.address,
                options=[("grpc.max_receive_message_length", 64 << 20)],
                interceptors=key_interceptors(API_KEY),
            )
        return self._agent_channel

    @property
    def agent(self) -> Any:
        """The router's AgentService (an aio stub, which the generated types describe as sync)."""
        return agent_pb2_grpc.AgentServiceStub(self.channel)

    def run_bytes(self) -> Any:
        """AgentService.Run taking requests already serialized, so a client can send what the
        protobuf library would not build."""
        return self.channel.stream_stream(
            RUN_METHOD,
            request_serializer=bytes,
            response_deserializer=agent_pb2.RunResponse.FromString,
        )

    def health(self) -> dict[str, health_pb2_grpc.HealthStub]:
        """The health services of the sandbox service and of the router, by service."""
        assert self.sandbox is not None and self.router is not None
        if self._health_channel is None:
            self._health_channel = grpc.aio.insecure_channel(self.sandbox.address)
        return {
            "sandbox": health_pb2_grpc.HealthStub(self._health_channel),
            "router": health_pb2_grpc.HealthStub(self.channel),
        }

    # -- runs

    async def execute(self, attack: Attack) -> Outcome:
        """Runs the attack's program the way the attack asks for; gives up on it (and cancels
        it) once it counts as hung."""
        work = asyncio.ensure_future(self._open(attack))
        try:
            return await self._within(work, attack)
        finally:
            await _cancel(work)

    def _open(self, attack: Attack) -> Awaitable[Outcome]:
        program = program_of(attack)
        if attack.streams:
            return self._stream(program, attack.client)
        return self._unary(program)

    @staticmethod
    async def _within(work: asyncio.Future[Outcome], attack: Attack) -> Outcome:
        """The outcome of `work` if it ends in time, else a hung one; `work` goes on either way."""
        began = time.monotonic()
        try:
            outcome = await asyncio.wait_for(asyncio.shield(work), bound_seconds(attack))
        except TimeoutError:
            return Outcome(ended=False, seconds=time.monotonic() - began)
        outcome.seconds = time.monotonic() - began
        return outcome

    async def _unary(self, program: program_pb2.Program) -> Outcome:
        try:
            reply = await self.agent.Execute(agent_pb2.ExecuteRequest(program=program))
        except grpc.aio.AioRpcError as exc:
            return Outcome(ended=True, seconds=0, status=exc.code(), details=exc.details() or "")
        return Outcome(ended=True, seconds=0, result=reply.result)

    async def _stream(self, program: program_pb2.Program, client: Client) -> Outcome:
        requests: asyncio.Queue[bytes | None] = asyncio.Queue()
        start = agent_pb2.RunRequest(start=agent_pb2.RunStart(program=program))
        await requests.put(start.SerializeToString())
        if client == "early":
            for call_id in (1, 2, 3):
                made_up = program_pb2.FunctionResult(call_id=call_id, value=wire({"key": "EARLY"}))
                await requests.put(agent_pb2.RunRequest(result=made_up).SerializeToString())
        if client == "half-close":
            await requests.put(None)

        async def feed() -> AsyncIterator[bytes]:
            while (item := await requests.get()) is not None:
                yield item

        call = self.run_bytes()(feed())
        outcome = Outcome(ended=True, seconds=0)
        try:
            async for response in call:
                kind = response.WhichOneof("message")
                if kind == "call":
                    asked = response.call
                    outcome.streamed += [asked.source, *strings(plain(asked.arguments))]
                    if client == "cancel":
                        call.cancel()
                        outcome.status = grpc.StatusCode.CANCELLED
                        break
                    for answer in answers(asked, client):
                        await requests.put(answer)
                elif kind == "log":
                    outcome.streamed.append(response.log.text)
                elif kind == "result":
                    outcome.result = response.result
                    break
        except grpc.aio.AioRpcError as exc:
            outcome.status, outcome.details = exc.code(), exc.details() or ""
        finally:
            await requests.put(None)
        return outcome

    async def healthy_during(self, work: Any) -> tuple[Any, list[str]]:
        """Awaits `work` while checking that the sandbox service and the router stay SERVING;
        returns its result and the failed checks."""
        stop = asyncio.Event()
        failures: list[str] = []
        stubs = self.health()

        async def check(service: str, stub: health_pb2_grpc.HealthStub) -> None:
            try:
                reply = await stub.Check(
                    health_pb2.HealthCheckRequest(), timeout=HEALTH_DEADLINE_SECONDS
                )
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    failures.append(f"{service} health {reply.status}")
            except grpc.aio.AioRpcError as exc:
                failures.append(f"{service} health check {exc.code().name}")

        async def watch() -> None:
            while not stop.is_set():
                await asyncio.gather(*(check(name, stub) for name, stub in stubs.items()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), HEALTH_PERIOD_SECONDS)

        watcher = asyncio.create_task(watch())
        try:
            return await work, failures
        finally:
            stop.set()
            await watcher

    async def probe(self) -> Outcome:
        return await self.execute(ordinary(PROBE))

    async def baseline(self) -> None:
        """The probe's outcome on the untouched mesh, which every later probe must match."""
        outcome = await self.probe()
        assert outcome.ended and outcome.value() is not None, outcome.describe()
        self.expected_probe = outcome.fingerprint()

    # -- judging

    async def attack(self, attack: Attack) -> list[str]:
        """Runs `attack` and everything the oracle needs; returns the problems found. A run that
        hangs is left open, as its client would leave it until its own deadline, while the next
        programs run; the mesh is restarted after an attack that hung or harmed it."""
        if attack.replay:
            problems = await self.replay(attack)
            problems += await self._next_run_problems([])
        else:
            after = ordinary(attack.after)
            before = await self.execute(after) if attack.after else None
            work = asyncio.ensure_future(self._open(attack))
            try:
                outcome, health = await self.healthy_during(self._within(work, attack))
                problems = self.judge(attack, outcome)
                if before is not None:
                    again = await self.execute(after)
                    if again.fingerprint() != before.fingerprint():
                        problems.append(
                            f"harmed: after the attack `{attack.after}` gave {again.describe()}, "
                            f"before it {before.describe()}"
                        )
                problems += await self._next_run_problems(health)
            finally:
                await _cancel(work)
        if problems:
            await self.restart()
        return problems

    async def _next_run_problems(self, health: list[str]) -> list[str]:
        """Health during the run, the next ordinary program and the services' logs."""
        problems = [f"harmed: {failure} during the run" for failure in sorted(set(health))]
        for which in NEXT_RUNS:
            probe = await self.probe()
            if not probe.ended or probe.seconds > PROBE_SECONDS:
                problems.append(f"harmed: the {which} ordinary run took {probe.seconds:.1f}s")
            elif probe.fingerprint() != self.expected_probe:
                problems.append(f"harmed: the {which} ordinary run gave {probe.describe()}")
        problems += [
            f"escaped: secret {name} in a service log"
            for name in self.canaries.found(self.new_service_logs())
        ]
        return problems

    def judge(self, attack: Attack, outcome: Outcome) -> list[str]:
        """The problems with one run's outcome (see the module docstring)."""
        if not outcome.ended:
            return [f"hung: {outcome.describe()}"]
        problems = []
        if outcome.status in CRASHES or (
            outcome.status == grpc.StatusCode.CANCELLED and attack.client != "cancel"
        ):
            problems.append(f"crashed: {outcome.describe()}")
        texts = outcome.texts()
        problems += [f"escaped: secret {name} in the output" for name in self.canaries.found(texts)]
        problems += [
            f"escaped: {sight!r} in the output ({outcome.describe()})"
            for sight in sighted(attack, texts)
        ]
        value = outcome.value()
        if value is not None and attack.expect is not NOTHING and value != attack.expect:
            problems.append(f"smuggled: {outcome.describe()} instead of {attack.expect!r}")
        for record in outcome.result.call_log.calls if outcome.result else []:
            if not record.call.source.startswith(f"{record.call.name}("):
                problems.append(f"smuggled: call {record.call.name} shown as {record.call.source}")
        return problems

    async def replay(self, attack: Attack) -> list[str]:
        """Feeds the attack's crafted call log to `genmesh sandbox replay`, as a user would."""
        log = self.dir / f"{attack.name}.json"
        log.write_text(attack.replay)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "genmesh",
            "sandbox",
            "replay",
            "--json",
            str(log),
            env=self.sandbox_env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        bound = bound_seconds(attack) + REPLAY_STARTUP_SECONDS
        try:
            out, err = await asyncio.wait_for(process.communicate(), bound)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            return [f"hung: the replay did not end within {bound:.0f}s"]
        texts = [out.decode(errors="replace"), err.decode(errors="replace")]
        problems = []
        if TRACEBACK in texts[1] or process.returncode not in (0, 1):
            problems.append(f"crashed: replay exited {process.returncode}: {texts[1][-300:]}")
        problems += [f"escaped: secret {name} in the replay" for name in self.canaries.found(texts)]
        problems += [f"escaped: {sight!r} in the replay" for sight in sighted(attack, texts)]
        return problems


def ordinary(code: str) -> Attack:
    """A program as the next user sends it: no library, globals or client functions."""
    return Attack("ordinary", "harm-next", "an ordinary program", code)


def answers(call: program_pb2.FunctionCall, client: Client) -> list[bytes]:
    """What the client sends back for `call` (serialized RunRequests), answering as `client`
    says."""
    if client in ("silent", "half-close"):
        return []
    if client == "deep":
        return [deep_answer(call.call_id, 150)]
    if client == "huge":
        results = [program_pb2.FunctionResult(call_id=call.call_id, value=wire("x" * (7 << 20)))]
    else:
        results = [honest(call)]
    if client == "wrong-id":
        results[0].call_id += 1000
    if client == "duplicate":
        results.append(results[0])
    return [agent_pb2.RunRequest(result=result).SerializeToString() for result in results]


def honest(call: program_pb2.FunctionCall) -> program_pb2.FunctionResult:
    """The answer of HOST_FUNCTIONS' function, or its failure."""
    function = HOST_FUNCTIONS.get(call.name)
    if function is None:
        return program_pb2.FunctionResult(call_id=call.call_id, error=f"no function {call.name}")
    try:
        value = function(**plain(call.arguments))
    except Exception as exc:
        return program_pb2.FunctionResult(call_id=call.call_id, error=str(exc))
    return program_pb2.FunctionResult(call_id=call.call_id, value=wire(value))


async def _cancel(work: asyncio.Future[Outcome]) -> None:
    """Ends a run still open, as its client would at its own deadline."""
    work.cancel()
    with contextlib.suppress(BaseException):
        await work


def _kill(process: ServiceProcess) -> None:
    """Stops a service at once: a harmed one may not answer SIGTERM in time."""
    if process.popen.poll() is None:
        process.popen.send_signal(signal.SIGKILL)
        process.popen.wait()
