"""The playground in headless Chromium (Debian's, driven by Playwright) against a real mesh: the
embedded SmolLM2 for chat and tokens, a slow echo for agent calls, the embedded image model,
Piper and Whisper, the sandbox, and an edge serving the page built by scripts/build_web.sh.

The browser's fake microphone plays a WAV that the mesh itself spoke, so speech to text is
checked against words known in advance. Screenshots go to .cache/artifacts/playground/.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import tempfile
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, ConsoleMessage, Page, sync_playwright

from tests.edge.conftest import edge_process, raw
from tests.router.conftest import sandbox  # noqa: F401 - shared fixture
from tests.support import API_KEY, ServiceProcess, echo_binding, router_config
from tests.ttt.conftest import SMOL, binding

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / ".cache" / "artifacts" / "playground"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]
# What the fake microphone says, a second in, then silence long enough that a test holding the
# microphone for a few seconds hears it once (Chromium loops the file from its start when the
# page opens the microphone).
SPOKEN = "The quick brown fox jumps over the lazy dog."
LEADING_SILENCE = 1.0
TRAILING_SILENCE = 6.0


@pytest.fixture(scope="session")
def web_dir() -> Path:
    built = subprocess.run(
        [str(ROOT / "scripts" / "build_web.sh")], capture_output=True, text=True, check=True
    )
    return Path(built.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def playground_router(
    smol_ttt: ServiceProcess,
    ttt: ServiceProcess,
    tti: ServiceProcess,
    audio: ServiceProcess,
    sandbox: ServiceProcess,  # noqa: F811 - the fixture imported above
) -> Iterator[ServiceProcess]:
    bindings = [
        {**binding("smollm2", smol_ttt.address, SMOL), "default": True},
        {**echo_binding(ttt.address), "extra": {"delay_ms": 20}},
        {"name": "shapes", "tasks": ["image", "image_edit"], "addresses": [tti.address]},
        {"name": "piper", "tasks": ["speech"], "addresses": [audio.address]},
        {"name": "whisper", "tasks": ["transcription"], "addresses": [audio.address]},
    ]
    config = router_config(bindings, sandbox_address=sandbox.address, metrics_port=0)
    process = ServiceProcess("router", config)
    yield process
    process.terminate()


@pytest.fixture(scope="session")
def playground(playground_router: ServiceProcess, web_dir: Path) -> Iterator[ServiceProcess]:
    metrics = playground_router.wait_for_event("listening")["metrics_port"]
    sources = {"router": f"http://127.0.0.1:{metrics}/metrics"}
    process = edge_process(playground_router, web_dir=str(web_dir), status_sources=sources)
    yield process
    process.terminate()


def spoken_wav(edge: ServiceProcess, path: Path) -> None:
    """SPOKEN as the mesh's Piper says it, between silences, as 16-bit PCM WAV."""
    request = {
        "task": "TASK_SPEECH",
        "inputs": [{"kind": "CONTENT_KIND_TEXT", "role": "INPUT_ROLE_USER_PROMPT", "text": SPOKEN}],
        "speech": {"format": "AUDIO_FORMAT_WAV"},
    }
    answer = raw(edge, "POST", "/api/generate", json.dumps(request).encode())
    assert answer.status == 200, answer.body
    with wave.open(io.BytesIO(base64.b64decode(answer.json()["outputs"][0]["data"]))) as source:
        params, frames = source.getparams(), source.readframes(source.getnframes())
        rate: int = source.getframerate()
        frame_bytes: int = source.getsampwidth() * source.getnchannels()

    def silence(seconds: float) -> bytes:
        return b"\0" * int(rate * seconds) * frame_bytes

    with wave.open(str(path), "wb") as out:
        out.setparams(params)
        out.writeframes(silence(LEADING_SILENCE) + frames + silence(TRAILING_SILENCE))


# Module scope: Playwright's sync API keeps an event loop running in the main thread while it is
# open, and pytest-asyncio cannot run the async tests of later modules beside it.
@pytest.fixture(scope="module")
def browser(playground: ServiceProcess) -> Iterator[BrowserContext]:
    """One Chromium with a fresh profile whose microphone plays the mesh's own speech."""
    with tempfile.TemporaryDirectory(prefix="genmesh-chromium-") as profile:
        microphone = Path(profile) / "spoken.wav"
        spoken_wav(playground, microphone)
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(Path(profile) / "user-data"),
                executable_path=CHROMIUM,
                headless=True,
                args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={microphone}"],
                viewport={"width": 1280, "height": 900},
                permissions=["microphone"],
            )
            try:
                yield context
            finally:
                context.close()


class Console:
    """A page's console errors and uncaught exceptions."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", self.on_console)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)


@pytest.fixture
def open_page(
    browser: BrowserContext, playground: ServiceProcess, request: pytest.FixtureRequest
) -> Iterator[Any]:
    """Opens the playground at a tab with a key already stored; at the end, screenshots the
    page and checks that nothing went to the console as an error."""
    pages: list[tuple[Page, Console]] = []

    def opened(tab: str = "chat", key: str = API_KEY) -> Page:
        page = browser.new_page()
        console = Console(page)
        page.add_init_script(f"localStorage.setItem('genmesh.apiKey', {json.dumps(key)})")
        page.goto(f"http://{playground.address}/#{tab}")
        pages.append((page, console))
        return page

    yield opened
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for index, (page, console) in enumerate(pages):
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-{index}.png"), full_page=True)
        page.close()
        expected = getattr(request.node, "expected_console", ())
        unexpected = [e for e in console.errors if not any(x in e for x in expected)]
        assert not unexpected, unexpected
