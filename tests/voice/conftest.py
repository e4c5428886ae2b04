"""Voice conversations through a real router, in front of the embedded SmolLM2 (and the echo
model of the same ttt service) and the audio service (Piper and Whisper)."""

from __future__ import annotations

import io
import wave
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from genmesh.cli.talk import Pcm, Turn, VoiceCall
from genmesh.client import Client, media_input
from genmesh.v1 import common_pb2, generation_pb2
from tests.support import API_KEY, ServiceProcess, router_config, serve
from tests.ttt.conftest import SMOL, binding

QUESTION = "What is the capital of France?"
RATE = 16000


@pytest.fixture(scope="session")
def voice_router(smol_ttt: ServiceProcess, audio: ServiceProcess) -> Iterator[ServiceProcess]:
    bindings = [
        {**binding("smollm2", smol_ttt.address, SMOL), "default": True},
        binding("echo-smol", smol_ttt.address, "echo"),
        {"name": "piper", "tasks": ["speech"], "addresses": [audio.address], "engine": "piper"},
        {
            "name": "whisper",
            "tasks": ["transcription"],
            "addresses": [audio.address],
            "engine": "faster-whisper",
        },
    ]
    yield from serve("router", router_config(bindings))


@pytest_asyncio.fixture(loop_scope="session")
async def voice_client(voice_router: ServiceProcess) -> AsyncIterator[Client]:
    async with Client(voice_router.address, API_KEY) as connected:
        yield connected


async def speak(client: Client, text: str) -> Pcm:
    """TEXT spoken by the real voice, as 16 kHz PCM."""
    request = common_pb2.GenerateRequest(
        task=common_pb2.TASK_SPEECH,
        inputs=[common_pb2.InputItem(kind=common_pb2.CONTENT_KIND_TEXT, text=text)],
        speech=common_pb2.SpeechParameters(
            format=common_pb2.AUDIO_FORMAT_PCM_S16LE, sample_rate=RATE
        ),
    )
    return Pcm((await client.generate(request)).outputs[0].data, RATE)


def silence(seconds: float) -> Pcm:
    return Pcm(bytes(int(seconds * RATE) * 2), RATE)


def wav_bytes(pcm: Pcm) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(pcm.rate)
        wav.writeframes(pcm.data)
    return buffer.getvalue()


async def transcribe(client: Client, pcm: Pcm) -> str:
    """What Whisper hears in PCM, through the router."""
    request = common_pb2.GenerateRequest(
        task=common_pb2.TASK_TRANSCRIPTION,
        inputs=[media_input("audio", wav_bytes(pcm), "audio/wav")],
        transcription=common_pb2.TranscriptionParameters(language="en"),
    )
    return (await client.generate(request)).outputs[0].text


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def question(voice_router: ServiceProcess) -> Pcm:
    """The question, spoken by Piper, with a second of silence after it."""
    async with Client(voice_router.address, API_KEY) as connected:
        spoken = await speak(connected, QUESTION)
    return Pcm(spoken.data + silence(1.0).data, RATE)


class Heard:
    """A voice conversation's events as they arrived, and by turn."""

    def __init__(self) -> None:
        self.responses: list[generation_pb2.ConverseResponse] = []
        self.turns: dict[str, Turn] = {}

    def take(self, response: generation_pb2.ConverseResponse) -> Turn:
        self.responses.append(response)
        turn = self.turns.setdefault(response.turn_id, Turn(response.turn_id))
        turn.take(response.event)
        return turn

    async def until_first_audio(self, call: VoiceCall) -> Turn:
        """Reads events until a reply's first audio chunk; returns that reply's turn."""
        async for response in call:
            turn = self.take(response)
            if response.event.HasField("audio_chunk"):
                return turn
        raise AssertionError("the conversation ended before any audio")

    async def rest(self, call: VoiceCall) -> None:
        async for response in call:
            self.take(response)

    def kinds(self, turn_id: str) -> list[str]:
        return [str(r.event.WhichOneof("event")) for r in self.responses if r.turn_id == turn_id]
