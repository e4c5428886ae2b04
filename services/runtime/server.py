"""Server bootstrap shared by every service, after the grpc/grpc Python lifecycle examples.

`serve` binds, reports NOT_SERVING until the service's startup (model loading) finishes, then
SERVING; on SIGTERM or SIGINT it flips every health status to NOT_SERVING, lets in-flight RPCs
drain for the grace period, and stops.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from genmesh.runtime import metrics, telemetry
from genmesh.runtime.auth import AuthInterceptor, KeyStore, keys_from_settings
from genmesh.runtime.channel import channel_options
from genmesh.runtime.interceptors import CallGate, ErrorInterceptor, Interceptor, MessageCheck
from genmesh.runtime.secrets import ProviderSecrets, start_secrets
from genmesh.runtime.settings import ConfigError, ServiceSettings
from genmesh.runtime.telemetry import TracingInterceptor
from genmesh.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class Service:
    """A gRPC service to host: its full name (for health and reflection) and its registration."""

    name: str
    register: Callable[[grpc.aio.Server], None]


Hook = Callable[[], Awaitable[None]]


def inference_service(servicer: inference_pb2_grpc.InferenceServiceServicer) -> Service:
    """The internal InferenceService every modality service hosts."""
    return Service(
        service_name(inference_pb2, "InferenceService"),
        lambda server: inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server),
    )


def service_name(module: object, service: str) -> str:
    """The full name of a service declared in a generated `_pb2` module."""
    descriptor = module.DESCRIPTOR  # type: ignore[attr-defined]
    return descriptor.services_by_name[service].full_name  # type: ignore[no-any-return]


def server_interceptors(
    keys: KeyStore, gate: CallGate | None = None, *inner: Interceptor
) -> list[Interceptor]:
    """Every server's interceptors, outermost first, and the whole list a server gets: the span
    sees the call's final status; errors become statuses around everything they can come from;
    a call is authenticated before the gate admits it (and counts it for draining), and before
    its message is checked. Any other goes in `inner`, innermost, and must be an `Interceptor`:
    the outermost keeps each method's whole chain, so grpc never reaches a plain one after it
    again (never append to the list)."""
    for extra in inner:
        if not isinstance(extra, Interceptor):
            raise TypeError(
                f"{type(extra).__name__} is not a genmesh Interceptor: the interceptors keep "
                "each method's chain, so it would run once per method, not once per call"
            )
    return [
        TracingInterceptor(),
        ErrorInterceptor(),
        AuthInterceptor(keys),
        gate or CallGate(),
        MessageCheck(),
        *inner,
    ]


class Runtime:
    """A running server: the handle services use for health and key updates."""

    def __init__(self, settings: ServiceSettings, services: Sequence[Service]) -> None:
        self.settings = settings
        self.services = services
        self.keys = KeyStore(keys_from_settings(settings))
        self.gate = CallGate()
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(
            interceptors=server_interceptors(self.keys, self.gate),
            options=[
                *channel_options(settings.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        self.port = 0
        self._stopping = asyncio.Event()

    async def set_status(
        self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        for service in self.services:
            await self.health.set(service.name, status)
        await self.health.set("", status)

    async def start(self) -> None:
        for service in self.services:
            service.register(self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [s.name for s in self.services]
        reflection.enable_server_reflection(
            [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        await self.set_status(NOT_SERVING)
        address = f"{self.settings.host}:{self.settings.port}"
        self.port = self.server.add_insecure_port(address)
        await self.server.start()

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_for_stop(self) -> None:
        await self._stopping.wait()

    async def stop(self) -> None:
        """NOT_SERVING, refuse new calls with UNAVAILABLE, let open ones finish within the
        grace period, then stop (cancelling whatever is left)."""
        await self.health.enter_graceful_shutdown()
        grace = self.settings.shutdown_grace_seconds
        started = time.monotonic()
        await self.gate.drain(grace)
        await self.server.stop(max(0.0, grace - (time.monotonic() - started)))


def announce(service: str, port: int, **fields: object) -> None:
    """One JSON line on stdout once the port is bound: launchers and tests wait for it."""
    print(
        json.dumps({"event": "listening", "service": service, "port": port, **fields}), flush=True
    )


async def serve(
    settings: ServiceSettings,
    services: Sequence[Service],
    *,
    startup: Hook | None = None,
    shutdown: Hook | None = None,
    on_runtime: Callable[[Runtime], None] | None = None,
    provider_secrets: ProviderSecrets | None = None,
) -> None:
    """Runs the services until SIGTERM or SIGINT; `provider_secrets` get the live secrets."""
    telemetry.setup(settings.service_name, settings.telemetry)
    runtime = Runtime(settings, services)
    # Keys from Vault (or the secrets file) join the configured ones and are refreshed.
    secrets = await start_secrets(settings, runtime.keys)
    if provider_secrets is not None:
        provider_secrets.bind(secrets)
    if not len(runtime.keys):
        await secrets.aclose()
        raise ConfigError(
            f"{settings.service_name}: no API key configured; set GENMESH_API_KEY "
            "(or GENMESH_INTERNAL_KEY for internal services), api_keys in the config file, "
            "or Vault"
        )
    if on_runtime:
        on_runtime(runtime)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runtime.request_stop)
    await runtime.start()
    metrics_port = metrics.serve(settings.host, settings.metrics_port)
    announce(settings.service_name, runtime.port)
    telemetry.event(
        log,
        "listening",
        service=settings.service_name,
        port=runtime.port,
        metrics_port=metrics_port,
    )
    try:
        if startup:
            await startup()
        await runtime.set_status(SERVING)
        announce(settings.service_name, runtime.port, ready=True)
        telemetry.event(log, "serving", service=settings.service_name)
        await runtime.wait_for_stop()
        telemetry.event(log, "draining", service=settings.service_name)
    finally:
        await runtime.stop()
        await secrets.aclose()
        if shutdown:
            await shutdown()
        telemetry.event(log, "stopped", service=settings.service_name)
        telemetry.shutdown()


def run(entry: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Entry point for `genmesh serve`: configuration errors exit with a message, not a trace."""
    try:
        asyncio.run(entry())
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(2) from None
