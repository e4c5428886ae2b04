"""Through a real router in front of the audio service: the CLI and streamed recognition."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf
from google.protobuf import duration_pb2

from genmesh.client import error_details
from genmesh.v1 import common_pb2, generation_pb2, generation_pb2_grpc
from tests.audio.conftest import word_error_rate
from tests.support import API_KEY, ServiceProcess, router_config, run_cli

TEXT = "The train leaves at half past seven. Please bring your ticket."


@pytest.fixture(scope="module")
def router(audio: ServiceProcess) -> Iterator[ServiceProcess]:
    bindings = [
        {"name": "piper", "tasks": ["speech"], "addresses": [audio.address], "engine": "piper"},
        {
            "name": "whisper",
            "tasks": ["transcription"],
            "addresses": [audio.address],
            "engine": "faster-whisper",
        },
    ]
    process = ServiceProcess("router", router_config(bindings))
    yield process
    process.terminate()


def test_speak_then_transcribe(router: ServiceProcess, tmp_path: Path) -> None:
    out = tmp_path / "speech.flac"
    spoken = run_cli(router, "speak", TEXT, "-o", str(out), "--voice", "en_US-joe-medium")
    assert spoken.returncode == 0, spoken.stderr
    assert "[1] The train leaves at half past seven." in spoken.stderr
    assert "[2] Please bring your ticket." in spoken.stderr
    info = sf.info(str(out))
    assert info.format == "FLAC"
    assert info.samplerate == 22050
    heard = run_cli(router, "transcribe", str(out), "--json", "--words")
    assert heard.returncode == 0, heard.stderr
    result = json.loads(heard.stdout)
    output = result["outputs"][0]
    assert output["transcript"]["language"] == "en"
    assert word_error_rate(TEXT, output["text"]) <= 0.10, output["text"]
    assert all(s["words"] for s in output["transcript"]["segments"])
    # A recording's name need not say what it is: its bytes do.
    nameless = tmp_path / "recording"
    nameless.write_bytes(out.read_bytes())
    plain = run_cli(router, "transcribe", str(nameless))
    assert plain.returncode == 0, plain.stderr
    assert "train" in plain.stdout.lower()


def test_errors_name_the_field(router: ServiceProcess, tmp_path: Path) -> None:
    spoken = run_cli(router, "speak", "Hello.", "-o", str(tmp_path / "x.wav"), "--speed", "9")
    assert spoken.returncode == 1
    assert "INVALID_ARGUMENT" in spoken.stderr
    assert "speech.speed" in spoken.stderr
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF" + bytes(100))
    heard = run_cli(router, "transcribe", str(broken))
    assert heard.returncode == 1
    assert "INVALID_ARGUMENT" in heard.stderr


async def test_converse_streams_transcripts_of_streamed_audio(
    router: ServiceProcess, tmp_path: Path
) -> None:
    out = tmp_path / "speech.pcm"
    assert run_cli(router, "speak", TEXT, "-o", str(out), "--sample-rate", "16000").returncode == 0
    speech = np.frombuffer(out.read_bytes(), dtype="<i2")
    audio = np.concatenate([speech, np.zeros(16000, dtype="<i2")])
    config = common_pb2.GenerateRequest(task=common_pb2.TASK_TRANSCRIPTION)
    messages = [generation_pb2.ConverseRequest(config=config)]
    for start in range(0, len(audio), 3200):
        chunk = common_pb2.AudioChunk(
            data=audio[start : start + 3200].tobytes(), mime_type="audio/pcm", sample_rate=16000
        )
        messages.append(generation_pb2.ConverseRequest(audio=chunk))
    end = common_pb2.Control(action=common_pb2.Control.ACTION_END_OF_INPUT)
    messages.append(generation_pb2.ConverseRequest(control=end))
    async with grpc.aio.insecure_channel(router.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        call = stub.Converse(iter(messages), metadata=(("x-api-key", API_KEY),))
        events = [response.event async for response in call]
    finals = [e.transcript for e in events if e.HasField("transcript") and e.transcript.is_final]
    assert finals
    assert events[-1].HasField("final")
    result = events[-1].final.outputs[0]
    assert [f.segment for f in finals] == list(result.transcript.segments)
    # A turn's segment joins Whisper's pieces of it, their measures taken over the whole.
    assert all(f.segment.tokens and -1 < f.segment.avg_logprob < 0 for f in finals)
    assert word_error_rate(TEXT, result.text) <= 0.10, result.text


def test_a_stream_the_service_refuses_keeps_its_status_while_audio_still_flows(
    router: ServiceProcess,
) -> None:
    """The audio service refuses the config while the router still writes the client's audio to
    it; the router's failed write must not turn that refusal into grpc's own INTERNAL (which it
    did in about one call of six)."""
    silence = duration_pb2.Duration(seconds=30)
    config = common_pb2.GenerateRequest(
        task=common_pb2.TASK_TRANSCRIPTION,
        transcription=common_pb2.TranscriptionParameters(end_of_speech_silence=silence),
    )
    chunk = common_pb2.AudioChunk(data=bytes(3200), mime_type="audio/pcm", sample_rate=16000)
    messages = [generation_pb2.ConverseRequest(config=config)]
    messages += [generation_pb2.ConverseRequest(audio=chunk)] * 20
    # The blocking client: grpc.aio's own client has the same fault on its side of the router.
    with grpc.insecure_channel(router.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        for _ in range(60):
            with pytest.raises(grpc.RpcError) as caught:
                for _ in stub.Converse(iter(messages), metadata=(("x-api-key", API_KEY),)):
                    pass
            details = error_details(caught.value)  # type: ignore[arg-type]
            assert details.code == grpc.StatusCode.INVALID_ARGUMENT, details
            assert "transcription.end_of_speech_silence" in details.violations, details
