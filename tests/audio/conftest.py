"""Audio test fixtures: one real audio service (Piper + Whisper) on a free loopback port."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import jiwer
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2, status_pb2

from genmesh.runtime.channel import key_interceptors
from genmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc

KEY = "audio-test-key"
Events = list[common_pb2.StreamEvent]

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def spell(n: int) -> str:
    """English words for 0 <= n < 1,000,000, as a speech engine reads digits."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = "" if n % 100 == 0 else " " + spell(n % 100)
        return f"{_ONES[n // 100]} hundred{rest}"
    rest = "" if n % 1000 == 0 else " " + spell(n % 1000)
    return f"{spell(n // 1000)} thousand{rest}"


def normalise(text: str) -> str:
    """Lower case, numbers as words, no punctuation: what WER should compare."""
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text.lower())
    text = re.sub(r"\d+", lambda m: f" {spell(int(m.group()))} ", text)
    text = re.sub(r"[^a-z' ]+", " ", text.replace("-", " "))
    return " ".join(text.split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    rate: float = jiwer.wer(normalise(reference), normalise(hypothesis))
    return rate


def bad_request(error: grpc.aio.AioRpcError) -> error_details_pb2.BadRequest:
    """The BadRequest detail of a failed call's google.rpc.Status."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                found = error_details_pb2.BadRequest()
                if detail.Unpack(found):
                    return found
    raise AssertionError(f"no BadRequest detail in {error!r}")


def speech_request(text: str, **params: Any) -> common_pb2.GenerateRequest:
    return common_pb2.GenerateRequest(
        request_id="speak",
        task=common_pb2.TASK_SPEECH,
        inputs=[common_pb2.InputItem(kind=common_pb2.CONTENT_KIND_TEXT, text=text)],
        speech=common_pb2.SpeechParameters(**params),
    )


def transcription_request(
    data: bytes | None = None, mime_type: str = "", **params: Any
) -> common_pb2.GenerateRequest:
    inputs = (
        []
        if data is None
        else [
            common_pb2.InputItem(
                kind=common_pb2.CONTENT_KIND_AUDIO,
                role=common_pb2.INPUT_ROLE_INPUT_AUDIO,
                data=data,
                mime_type=mime_type,
            )
        ]
    )
    return common_pb2.GenerateRequest(
        request_id="transcribe",
        task=common_pb2.TASK_TRANSCRIPTION,
        inputs=inputs,
        transcription=common_pb2.TranscriptionParameters(**params),
    )


async def infer(
    stub: inference_pb2_grpc.InferenceServiceStub, request: common_pb2.GenerateRequest
) -> Events:
    """Runs one request to the end and returns every event, the final one last."""
    call = stub.Infer(iter([inference_pb2.InferRequest(request=request)]))
    return [response.event async for response in call]


def final(events: Events) -> common_pb2.GenerateResponse:
    assert events and events[-1].WhichOneof("event") == "final", events[-1:]
    return events[-1].final


@pytest.fixture(scope="session")
def audio_port() -> Iterator[int]:
    env = {**os.environ, "GENMESH_INTERNAL_KEY": KEY, "GENMESH_AUDIO_PORT": "0"}
    env.pop("GENMESH_CONFIG", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "genmesh", "serve", "audio"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    port = 0
    for line in process.stdout:
        event = json.loads(line) if line.startswith("{") else {}
        if event.get("ready"):
            port = int(event["port"])
            break
    assert port, "the audio service did not start"
    yield port
    process.terminate()
    process.wait(timeout=30)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def stub(audio_port: int) -> AsyncIterator[inference_pb2_grpc.InferenceServiceStub]:
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{audio_port}",
        interceptors=key_interceptors(KEY),
        options=[("grpc.max_receive_message_length", 64 << 20)],
    ) as channel:
        yield inference_pb2_grpc.InferenceServiceStub(channel)
