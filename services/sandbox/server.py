"""Wires the sandbox service: settings, the zygote and its executor, SandboxService, health.

Besides the service's own health entry, `genmesh.sandbox.isolation` is SERVING only while every
isolation layer is in force, so a missing layer shows up in health checks, not only in a log.
"""

from __future__ import annotations

import logging

from genmesh.runtime.server import (
    NOT_SERVING,
    SERVING,
    Runtime,
    Service,
    announce,
    serve,
    service_name,
)
from genmesh.runtime.settings import load_settings
from genmesh.sandbox.executor import Executor
from genmesh.sandbox.service import SandboxService
from genmesh.sandbox.settings import SandboxSettings
from genmesh.v1 import sandbox_pb2, sandbox_pb2_grpc

ISOLATION_HEALTH = "genmesh.sandbox.isolation"

log = logging.getLogger(__name__)


async def main() -> None:
    settings = load_settings(SandboxSettings)
    executor = Executor(settings.limits(), require_isolation=settings.require_isolation)
    servicer = SandboxService(executor)
    runtimes: list[Runtime] = []

    async def startup() -> None:
        await executor.start()
        missing = executor.missing_layers()
        for layer in executor.layers:
            state = "in force" if layer["active"] else "MISSING"
            log.warning("isolation %s: %s (%s)", layer["name"], state, layer["detail"])
        announce(
            settings.service_name,
            runtimes[0].port,
            isolation={layer["name"]: layer["active"] for layer in executor.layers},
        )
        await runtimes[0].health.set(ISOLATION_HEALTH, NOT_SERVING if missing else SERVING)

    name = service_name(sandbox_pb2, "SandboxService")
    await serve(
        settings,
        [
            Service(
                name, lambda s: sandbox_pb2_grpc.add_SandboxServiceServicer_to_server(servicer, s)
            )
        ],
        startup=startup,
        shutdown=executor.stop,
        on_runtime=runtimes.append,
    )
