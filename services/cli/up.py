"""`genmesh up`: the whole mesh as local processes, health-checked, with a demo of each part.

Each service runs as its own `genmesh serve` process in its own session (so Ctrl-C reaches only
this launcher, which then stops the router first and the backends after it) and dies with the
launcher if the launcher is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import click
import yaml
from google.protobuf import json_format

from genmesh.client import Client, embed_request, key_file, media_input, text_request
from genmesh.v1 import common_pb2

PR_SET_PDEATHSIG = 1
READY_TIMEOUT_S = 600.0
GATEWAY_BUILD = Path(__file__).resolve().parents[1] / "gateway" / "build.sh"


@dataclass(frozen=True)
class Component:
    """A service `up` starts: its port offset from the router's and the bindings it serves."""

    service: str
    offset: int
    bindings: tuple[dict[str, Any], ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)


COMPONENTS = (
    Component(
        "ttt",
        1,
        (
            {
                "name": "smollm2",
                "tasks": ["text"],
                "engine": "llama.cpp",
                "model": "smollm2-135m-instruct",
                "description": "SmolLM2-135M-Instruct (GGUF) on llama.cpp",
                "default": True,
            },
            {
                "name": "echo",
                "tasks": ["text"],
                "engine": "echo",
                "model": "echo",
                "description": "deterministic echo engine, for overhead and load tests",
            },
        ),
        {
            "models": [
                {"name": "smollm2-135m-instruct", "engine": "llama.cpp"},
                {"name": "echo", "engine": "echo"},
            ]
        },
    ),
    Component(
        "tti",
        2,
        (
            {
                "name": "shapes",
                "tasks": ["image", "image_edit"],
                "engine": "diffusers",
                "description": "genmesh's own small text-to-image model (shapes and colours)",
            },
        ),
    ),
    Component(
        "audio",
        3,
        (
            {
                "name": "piper",
                "tasks": ["speech"],
                "engine": "piper",
                "description": "Piper VITS voice en_US-joe-medium",
            },
            {
                "name": "whisper",
                "tasks": ["transcription"],
                "engine": "faster-whisper",
                "description": "Whisper base (CTranslate2)",
            },
        ),
    ),
    Component("sandbox", 4),
)
# The router's Prometheus port, after the components'.
ROUTER_METRICS_OFFSET = 5


def mesh_config(base_port: int, edge_port: int = 8000) -> dict[str, Any]:
    """The YAML every process reads: ports, the router's bindings pointing at them, and the
    edge pointing at the router (and at its /metrics, for the playground's status)."""
    metrics = base_port + ROUTER_METRICS_OFFSET
    config: dict[str, Any] = {
        "router": {"port": base_port, "bindings": [], "metrics_port": metrics},
        "edge": {
            "port": edge_port,
            "router_address": f"127.0.0.1:{base_port}",
            "status_sources": {"router": f"http://127.0.0.1:{metrics}/metrics"},
        },
    }
    for component in COMPONENTS:
        port = base_port + component.offset
        config[component.service] = {"port": port, **component.settings}
        if component.service == "sandbox":
            config["router"]["sandbox_address"] = f"127.0.0.1:{port}"
        for binding in component.bindings:
            config["router"]["bindings"].append({**binding, "addresses": [f"127.0.0.1:{port}"]})
    return config


def local_key() -> str:
    """GENMESH_API_KEY, else the saved key, else a new one saved for the CLI to find."""
    key = os.environ.get("GENMESH_API_KEY")
    if key:
        return key
    path = key_file()
    if path.is_file():
        return path.read_text().strip()
    key = "gm-" + secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(key + "\n")
    return key


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def edge_env(env: dict[str, str]) -> dict[str, str]:
    """The edge's environment: without the mesh's keys, which it has no use for (it forwards
    each HTTP client's own key)."""
    return {k: v for k, v in env.items() if k not in ("GENMESH_API_KEY", "GENMESH_INTERNAL_KEY")}


class Process:
    def __init__(
        self, service: str, env: dict[str, str], log_dir: Path, command: list[str] | None = None
    ) -> None:
        self.service = service
        self.log_path = log_dir / f"{service}.log"
        self.log: IO[bytes] = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            command or [sys.executable, "-m", "genmesh", "serve", service],
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.log,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - the launcher runs no threads
        )

    def wait_ready(self, deadline: float) -> None:
        assert self.popen.stdout is not None
        while time.monotonic() < deadline:
            line = self.popen.stdout.readline()
            if not line:
                raise click.ClickException(
                    f"{self.service} exited during startup; see {self.log_path}"
                )
            with contextlib.suppress(ValueError):
                if json.loads(line).get("ready"):
                    return
        raise click.ClickException(f"{self.service} was not ready in time; see {self.log_path}")

    def stop(self, grace: float) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log.close()


def build_gateway() -> str | None:
    """The REST gateway binary, built with Go from the source tree; None when either is missing."""
    if not GATEWAY_BUILD.is_file() or shutil.which("go") is None:
        click.echo("REST gateway skipped: it needs Go and the genmesh source tree", err=True)
        return None
    click.echo("building the REST gateway...")
    built = subprocess.run([str(GATEWAY_BUILD)], capture_output=True, text=True, check=False)
    if built.returncode != 0:
        raise click.ClickException(f"building the REST gateway failed:\n{built.stderr}")
    return built.stdout.strip().splitlines()[-1]


DEMO_PROGRAM = """\
words = ["mesh", "sandbox", "parallel"]
echoes = [generate_text(w, binding="echo") for w in words]
{"lengths": {w: len(w) for w in words}, "echoes": echoes}
"""


def _dot(a: list[float], b: list[float]) -> float:
    """The cosine of two unit vectors."""
    return sum(x * y for x, y in zip(a, b, strict=True))


def _item(text: str) -> common_pb2.InputItem:
    return common_pb2.InputItem(kind=common_pb2.CONTENT_KIND_TEXT, text=text)


async def _generate_to_file(
    client: Client, request: common_pb2.GenerateRequest, path: Path
) -> common_pb2.OutputItem:
    """Runs one generation and writes its output to PATH (images and speech take a while on CPU:
    a generous timeout)."""
    response = await client.generate(request, timeout=600)
    await asyncio.to_thread(path.write_bytes, response.outputs[0].data)
    return response.outputs[0]


async def demo(address: str, key: str, out_dir: Path) -> None:
    """One generation of each modality, a round trip through speech, and an agent run."""
    async with Client(address, key) as client:
        request = text_request("Hello! Who are you?", parameters=common_pb2.TextParameters(seed=1))
        click.echo("  text  > ", nl=False)
        async for event in client.generate_stream(request, timeout=300):
            if event.HasField("text_delta"):
                click.echo(event.text_delta.text, nl=False)
        click.echo()
        embedded = await client.embed(embed_request(["cat", "kitten", "tax"]), timeout=120)
        cat, kitten, tax = (list(e.values) for e in embedded.embeddings)
        click.echo(
            f"  embed > {embedded.model}: cosine(cat, kitten) {_dot(cat, kitten):.2f}, "
            f"cosine(cat, tax) {_dot(cat, tax):.2f}"
        )
        image_path = out_dir / "demo.png"
        await _generate_to_file(
            client,
            common_pb2.GenerateRequest(
                task=common_pb2.TASK_IMAGE,
                inputs=[_item("a red circle on a blue background")],
                image=common_pb2.ImageParameters(seed=7),
            ),
            image_path,
        )
        click.echo(f"  image > {image_path} ('a red circle on a blue background')")
        speech_path = out_dir / "demo.wav"
        speech = await _generate_to_file(
            client,
            common_pb2.GenerateRequest(
                task=common_pb2.TASK_SPEECH,
                inputs=[_item("Hello from the genmesh audio service.")],
            ),
            speech_path,
        )
        click.echo(f"  speak > {speech_path}")
        heard = await client.generate(
            common_pb2.GenerateRequest(
                task=common_pb2.TASK_TRANSCRIPTION,
                inputs=[media_input("audio", speech.data, speech.mime_type)],
            ),
            timeout=600,
        )
        click.echo(f"  heard > {heard.outputs[0].text.strip()}")
        result = await client.execute(DEMO_PROGRAM, timeout=300)
        if result.HasField("error"):
            raise click.ClickException(f"agent demo failed: {result.error.message}")
        click.echo(f"  agent > {json_format.MessageToJson(result.value, indent=None)}")


@click.command()
@click.option("--base-port", default=50051, show_default=True, help="Router port; others follow.")
@click.option("--demo/--no-demo", "run_demo", default=True, help="Show a generation once up.")
@click.option("--log-dir", type=click.Path(path_type=Path), default=None)
@click.option(
    "--gateway-port", default=8080, show_default=True, help="REST gateway port; 0 disables it."
)
@click.option(
    "--edge-port",
    default=8000,
    show_default=True,
    help="HTTP edge (OpenAI-compatible API) port; 0 disables it.",
)
def up(
    base_port: int, run_demo: bool, log_dir: Path | None, gateway_port: int, edge_port: int
) -> None:
    """Run the whole mesh locally until Ctrl-C."""
    key = local_key()
    gateway = build_gateway() if gateway_port else None
    run_dir = Path(tempfile.mkdtemp(prefix="genmesh-up-"))
    log_dir = log_dir or run_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "mesh.yaml"
    config_path.write_text(yaml.safe_dump(mesh_config(base_port, edge_port)))
    env = {
        **os.environ,
        "GENMESH_CONFIG": str(config_path),
        "GENMESH_API_KEY": key,
        "GENMESH_INTERNAL_KEY": "gm-internal-" + secrets.token_urlsafe(24),
    }
    stop = {"requested": False}

    def request_stop(signum: int, frame: object) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    processes: list[Process] = []
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        for component in COMPONENTS:
            processes.append(Process(component.service, env, log_dir))
        for process in processes:
            process.wait_ready(deadline)
        router = Process("router", env, log_dir)
        processes.insert(0, router)
        router.wait_ready(deadline)
        address = f"127.0.0.1:{base_port}"
        if gateway:
            listen = f"127.0.0.1:{gateway_port}"
            command = [gateway, f"-router={address}", f"-listen={listen}"]
            processes.insert(0, Process("gateway", env, log_dir, command))
            processes[0].wait_ready(deadline)
        if edge_port:
            processes.insert(0, Process("edge", edge_env(env), log_dir))
            processes[0].wait_ready(deadline)
        click.echo(f"genmesh is up: router at {address} (logs in {log_dir})")
        if gateway:
            click.echo(f"  REST: http://{listen}/v1/...  (OpenAPI at http://{listen}/openapi.json)")
        origin = "from GENMESH_API_KEY" if os.environ.get("GENMESH_API_KEY") else f"in {key_file()}"
        click.echo(f"  API key: {key}  ({origin})")
        if edge_port:
            base_url = f"http://127.0.0.1:{edge_port}/v1"
            click.echo(f"  Playground: http://127.0.0.1:{edge_port}/  (API docs at /docs/)")
            click.echo(f"  OpenAI-compatible API: {base_url}  (the API key above is the key)")
            click.echo(
                f'    OpenAI(base_url="{base_url}", api_key="{key}")'
                '.chat.completions.create(model="smollm2", messages=[...])'
            )
        click.echo(
            f"  try: genmesh generate 'Hello'  |  grpcurl -plaintext -H 'x-api-key: {key}' "
            f"{address} list"
        )
        if run_demo:
            asyncio.run(demo(address, key, log_dir))
        click.echo("Press Ctrl-C to stop.")
        while not stop["requested"]:
            for process in processes:
                if process.popen.poll() is not None:
                    raise click.ClickException(
                        f"{process.service} exited unexpectedly; see {process.log_path}"
                    )
            time.sleep(0.2)
        click.echo("stopping...")
    finally:
        for process in processes:
            process.stop(grace=15)
