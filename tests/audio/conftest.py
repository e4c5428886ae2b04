"""Audio test fixtures: one real audio service (Piper + Whisper) on a free loopback port."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
import jiwer
import pytest_asyncio

from genmesh.client import media_input
from genmesh.runtime.channel import channel_options, key_interceptors
from genmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from tests.support import INTERNAL_KEY, ServiceProcess

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
    inputs = [] if data is None else [media_input("audio", data, mime_type)]
    return common_pb2.GenerateRequest(
        request_id="transcribe",
        task=common_pb2.TASK_TRANSCRIPTION,
        inputs=inputs,
        transcription=common_pb2.TranscriptionParameters(**params),
    )


async def infer(
    stub: inference_pb2_grpc.InferenceServiceAsyncStub, request: common_pb2.GenerateRequest
) -> Events:
    """Runs one request to the end and returns every event, the final one last."""
    call = stub.Infer(iter([inference_pb2.InferRequest(request=request)]))
    return [response.event async for response in call]


def final(events: Events) -> common_pb2.GenerateResponse:
    assert events and events[-1].WhichOneof("event") == "final", events[-1:]
    return events[-1].final


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def stub(
    audio: ServiceProcess,
) -> AsyncIterator[inference_pb2_grpc.InferenceServiceAsyncStub]:
    async with grpc.aio.insecure_channel(
        audio.address,
        interceptors=key_interceptors(INTERNAL_KEY),
        options=channel_options(64 << 20),
    ) as channel:
        yield inference_pb2_grpc.InferenceServiceStub(channel)
