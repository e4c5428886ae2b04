"""The property tests' mesh: a router in front of every modality service and the sandbox, each
real, with limits small enough that any request they accept is cheap to serve."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from genmesh.tti.settings import EMBEDDED_MODEL
from tests.support import ServiceProcess, echo_binding, router_config

BACKENDS: dict[str, dict[str, Any]] = {
    "ttt": {},
    "sandbox": {},
    "tti": {
        "models": [{"name": EMBEDDED_MODEL, "steps": 2}],
        "limits": {"max_width": 64, "max_height": 64, "max_steps": 3, "max_images": 2},
    },
    "audio": {"max_text_chars": 200, "max_audio_seconds": 30},
}


@dataclass
class Mesh:
    router: ServiceProcess
    backends: dict[str, ServiceProcess]

    def processes(self) -> dict[str, ServiceProcess]:
        return {"router": self.router, **self.backends}


def router_bindings(backends: dict[str, ServiceProcess]) -> list[dict[str, Any]]:
    tti, audio = backends["tti"].address, backends["audio"].address
    return [
        echo_binding(backends["ttt"].address),
        {"name": "tti", "tasks": ["image", "image_edit"], "addresses": [tti]},
        {"name": "piper", "tasks": ["speech"], "addresses": [audio]},
        {"name": "whisper", "tasks": ["transcription"], "addresses": [audio]},
    ]


@pytest.fixture(scope="session")
def mesh() -> Iterator[Mesh]:
    """The backends start side by side; whatever started is stopped, whatever failed."""
    processes: list[ServiceProcess] = []
    try:
        with ThreadPoolExecutor(len(BACKENDS)) as pool:
            futures = {name: pool.submit(ServiceProcess, name, c) for name, c in BACKENDS.items()}
        processes.extend(f.result() for f in futures.values() if f.exception() is None)
        backends = {name: future.result() for name, future in futures.items()}
        config = router_config(
            router_bindings(backends), sandbox_address=backends["sandbox"].address
        )
        router = ServiceProcess("router", config)
        processes.append(router)
        yield Mesh(router, backends)
    finally:
        for process in processes:
            process.terminate()
