"""Bad input of every kind gets a clear status with details, and the service lives on."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest

from genmesh.client import error_details
from genmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from tests.audio.conftest import (
    final,
    infer,
    speech_request,
    transcription_request,
)

BAD_REQUESTS = {
    "empty text": (speech_request("  \n "), "inputs"),
    # Punctuation alone has no phonemes: Piper answered it with no audio at all.
    "no words": (speech_request("... … ?!"), "inputs"),
    "NUL character": (speech_request("Hello\x00there."), "inputs"),
    "unknown format": (speech_request("Hello.", format=9), "speech.format"),
    "opus rate": (
        speech_request("Hello.", format=common_pb2.AUDIO_FORMAT_OGG_OPUS, sample_rate=22050),
        "speech.sample_rate",
    ),
    "rate out of range": (speech_request("Hello.", sample_rate=192000), "speech.sample_rate"),
    "unknown voice": (speech_request("Hello.", voice="nobody"), "speech.voice"),
    "speed": (speech_request("Hello.", speed=0.0), "speech.speed"),
    "undecodable audio": (
        transcription_request(b"RIFF" + bytes(200), "audio/wav"),
        "inputs[0].data",
    ),
    "truncated flac": (
        transcription_request(b"fLaC\x00\x00\x00\x22", "audio/flac"),
        "inputs[0].data",
    ),
    "unsupported type": (transcription_request(b"\x00" * 64, "video/mp4"), "inputs[0].data"),
    "missing type": (transcription_request(b"\x00" * 64, ""), "inputs[0].mime_type"),
    "unknown language": (
        transcription_request(b"\x00" * 64, "audio/wav", language="xx"),
        "transcription.language",
    ),
    "wrong task": (
        common_pb2.GenerateRequest(
            task=common_pb2.TASK_IMAGE, inputs=[common_pb2.InputItem(text="a")]
        ),
        "task",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_bad_input_is_invalid_argument_with_details(
    stub: inference_pb2_grpc.InferenceServiceAsyncStub, case: str
) -> None:
    request, field = BAD_REQUESTS[case]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await infer(stub, request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert list(error_details(caught.value).violations) == [field]
    # The service keeps serving after every rejection.
    assert final(await infer(stub, speech_request("Still here."))).outputs[0].data


async def test_bad_streamed_audio_is_rejected(
    stub: inference_pb2_grpc.InferenceServiceAsyncStub,
) -> None:
    call = stub.Infer()
    await call.write(inference_pb2.InferRequest(request=transcription_request()))
    chunk = common_pb2.AudioChunk(data=b"\x00" * 3200, mime_type="audio/mpeg")
    # The service may refuse the chunk (and end the call) before this write returns.
    with contextlib.suppress(asyncio.InvalidStateError):
        await call.write(inference_pb2.InferRequest(audio=chunk))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(error_details(caught.value).violations) == ["audio.mime_type"]


async def test_unknown_model_is_not_found(
    stub: inference_pb2_grpc.InferenceServiceAsyncStub,
) -> None:
    request = speech_request("Hello.")
    request.model = "no-such-voice"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await infer(stub, request)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info_error:
        await stub.GetModelInfo(inference_pb2.InferenceServiceGetModelInfoRequest(model="gpt"))
    assert info_error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_catalogue_lists_voices_languages_and_rates(
    stub: inference_pb2_grpc.InferenceServiceAsyncStub,
) -> None:
    models = (await stub.ListModels(inference_pb2.InferenceServiceListModelsRequest())).models
    by_name = {m.name: m for m in models}
    voice, recogniser = by_name["en_US-joe-medium"], by_name["whisper-base"]
    assert list(voice.tasks) == [common_pb2.TASK_SPEECH]
    assert list(voice.voices) == ["en_US-joe-medium"]
    assert list(voice.languages) == ["en"]
    assert list(voice.sample_rates) == [22050]
    assert list(recogniser.tasks) == [common_pb2.TASK_TRANSCRIPTION]
    assert recogniser.supports_audio
    assert {"en", "de", "fr", "ja"} <= set(recogniser.languages)
    assert list(recogniser.sample_rates) == [16000]
    assert all(m.loaded and m.size_bytes > 10_000_000 for m in models)
    default = await stub.GetModelInfo(inference_pb2.InferenceServiceGetModelInfoRequest())
    assert default.model == voice
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Tokenize(inference_pb2.InferenceServiceTokenizeRequest(text="hi"))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
