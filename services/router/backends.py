"""Replicas of modality services: channels, health checks, round-robin selection, admission.

Each replica has its own watcher: it checks health every interval, and at once when the
replica's connection changes state (a crashed process closes its sockets), so a replica that
goes down stops receiving new requests well within a second. Selection skips replicas that
failed their last check.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genmesh.router.settings import TASKS, BindingConfig
from genmesh.runtime import errors, telemetry
from genmesh.runtime.channel import connect
from genmesh.runtime.limiter import Slots
from genmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)
INFERENCE_SERVICE = "genmesh.v1.InferenceService"
MIN_CHECK_TIMEOUT_S = 2.0
HUNG_AFTER_LATE_CHECKS = 3
CANCEL = inference_pb2.InferRequest(
    control=common_pb2.Control(action=common_pb2.Control.ACTION_CANCEL)
)
InferCall = grpc.aio.StreamStreamCall[inference_pb2.InferRequest, inference_pb2.InferResponse]


async def send_request(
    call: InferCall, request: common_pb2.GenerateRequest, interactive: bool
) -> None:
    """Opens an Infer stream with its request. An interactive caller keeps the write side open
    to cancel in-band later; any other closes it, so a backend that would read more input (a
    live transcription) knows there is none."""
    await call.write(inference_pb2.InferRequest(request=request))
    if not interactive:
        await call.done_writing()


async def cancel_in_band(call: InferCall) -> bool:
    """Asks the backend to end the generation itself: its final message then keeps the partial
    output, usage and timings, which aborting the call would lose. False when the call can no
    longer take it (it has ended, or its write side is closed)."""
    try:
        await call.write(CANCEL)
    except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
        return False
    return True


class Replica:
    def __init__(self, address: str, key: str | None) -> None:
        self.address = address
        self.channel = connect(address, key)
        self.stub = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        # Optimistic until the first check, so a cold router does not refuse its first calls.
        self.healthy = True
        self._late = 0

    async def check(self, timeout: float) -> None:
        try:
            response = await self._health.Check(
                health_pb2.HealthCheckRequest(service=INFERENCE_SERVICE), timeout=timeout
            )
            healthy = response.status == health_pb2.HealthCheckResponse.SERVING
            self._late = 0
        except grpc.aio.AioRpcError as error:
            # One late answer over a live connection means busy, not down: under load, marking
            # the only replica down would refuse every request. Dead replicas close the socket;
            # a hung one (a stopped process) keeps it open but misses every check.
            connected = self.channel.get_state() == grpc.ChannelConnectivity.READY
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and connected:
                self._late += 1
                if self._late < HUNG_AFTER_LATE_CHECKS:
                    return
            healthy = False
        self._set(healthy)

    def _set(self, healthy: bool) -> None:
        if healthy != self.healthy:
            telemetry.event(log, "replica health changed", address=self.address, healthy=healthy)
        self.healthy = healthy

    def mark_down(self) -> None:
        """After a failed call: out of rotation until a health check says otherwise."""
        self._set(False)

    async def watch(self, interval: float) -> None:
        """Checks health every `interval`, and immediately after a connection state change."""
        while True:
            state = self.channel.get_state(try_to_connect=False)
            await self.check(max(interval, MIN_CHECK_TIMEOUT_S))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.channel.wait_for_state_change(state), interval)


class BindingRoute:
    """A binding instance, its replicas and its admission control."""

    def __init__(self, config: BindingConfig, key: str | None) -> None:
        self.config = config
        self.name = config.name
        self.tasks = [TASKS[t] for t in config.tasks]
        self.replicas = [Replica(address, key) for address in config.addresses]
        self.slots = Slots(
            config.name,
            config.max_concurrent,
            config.max_queue,
            config.queue_timeout_seconds,
            kind="binding",
        )
        self._turn = itertools.count()

    def pick(self, exclude: Replica | None = None) -> Replica:
        """The next healthy replica in round-robin order."""
        candidates = [r for r in self.replicas if r.healthy and r is not exclude]
        if not candidates:
            raise errors.unavailable(
                f"binding '{self.name}' has no healthy replica", binding=self.name
            )
        return candidates[next(self._turn) % len(candidates)]

    def healthy_count(self) -> int:
        return sum(r.healthy for r in self.replicas)


class Backends:
    """Every binding's replicas, kept health-checked."""

    def __init__(self, bindings: list[BindingConfig], key: str | None, interval: float) -> None:
        self.routes = {b.name: BindingRoute(b, key) for b in bindings}
        self.interval = interval
        self._tasks: list[asyncio.Task[None]] = []

    def get(self, name: str) -> BindingRoute:
        route = self.routes.get(name)
        if route is None:
            raise errors.not_found(f"unknown binding '{name}'", "binding", name, "binding")
        return route

    def default_for(self, task: int) -> BindingRoute:
        serving = [r for r in self.routes.values() if task in r.tasks]
        if not serving:
            name = common_pb2.Task.Name(task)  # type: ignore[arg-type]
            raise errors.not_found(f"no binding serves {name}", "binding", "(default)", "binding")
        return next((r for r in serving if r.config.default), serving[0])

    def replicas(self) -> list[Replica]:
        return [r for route in self.routes.values() for r in route.replicas]

    async def check_all(self) -> None:
        await asyncio.gather(*(r.check(self.interval) for r in self.replicas()))

    def start(self) -> None:
        self._tasks = [asyncio.create_task(r.watch(self.interval)) for r in self.replicas()]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for replica in self.replicas():
            await replica.channel.close()
