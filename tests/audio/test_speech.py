"""Text-to-speech through the audio service: streaming order, formats, rates, round trip."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

from genmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from tests.audio.conftest import (
    final,
    infer,
    speech_request,
    transcription_request,
    word_error_rate,
)

SENTENCES = [
    "The weather today is sunny and warm.",
    "There are 42 apples in the basket on the kitchen table.",
    "Please remember to close the window before you leave the house.",
    "My brother bought a new bicycle last week.",
    "We will meet at the library at 3 o'clock.",
]


async def test_speech_round_trips_through_recognition(
    stub: inference_pb2_grpc.InferenceServiceAsyncStub,
) -> None:
    text = " ".join(SENTENCES)
    speech = final(await infer(stub, speech_request(text)))
    audio = speech.outputs[0]
    assert audio.kind == common_pb2.CONTENT_KIND_AUDIO
    assert audio.mime_type == "audio/wav"
    events = await infer(stub, transcription_request(audio.data, audio.mime_type))
    transcript = final(events).outputs[0]
    assert transcript.transcript.language == "en"
    assert word_error_rate(text, transcript.text) <= 0.10, transcript.text


async def test_first_chunk_streams_before_the_last_sentence_is_synthesised(
    stub: inference_pb2_grpc.InferenceServiceAsyncStub,
) -> None:
    events = await infer(stub, speech_request(" ".join(SENTENCES)))
    kinds = [e.WhichOneof("event") for e in events]
    chunks = [e.audio_chunk for e in events if e.HasField("audio_chunk")]
    last_started = next(
        i for i, e in enumerate(events) if e.progress.step == len(SENTENCES) and e.progress.stage
    )
    # The service announces each sentence as it starts synthesising it, so the first audio must
    # come out before the announcement of the last sentence.
    assert kinds.index("audio_chunk") < last_started
    assert [c.text for c in chunks] == SENTENCES
    assert [c.sequence for c in chunks] == list(range(len(SENTENCES)))
    assert all(c.sample_rate == 22050 and c.data for c in chunks)
    whole, rate = sf.read(io.BytesIO(final(events).outputs[0].data))
    pieces = [sf.read(io.BytesIO(c.data))[0] for c in chunks]
    assert rate == 22050
    assert len(whole) == sum(len(p) for p in pieces)


async def test_every_format_and_rate_decodes(
    stub: inference_pb2_grpc.InferenceServiceAsyncStub,
) -> None:
    text = "Hello from the speech service."
    expected = {
        common_pb2.AUDIO_FORMAT_WAV: ("audio/wav", 16000),
        common_pb2.AUDIO_FORMAT_FLAC: ("audio/flac", 44100),
        common_pb2.AUDIO_FORMAT_OGG_OPUS: ("audio/ogg;codecs=opus", 24000),
    }
    durations = []
    for fmt, (mime, rate) in expected.items():
        request_rate = 0 if fmt == common_pb2.AUDIO_FORMAT_OGG_OPUS else rate
        result = final(
            await infer(stub, speech_request(text, format=fmt, sample_rate=request_rate))
        )
        output = result.outputs[0]
        assert output.mime_type == mime
        samples, got_rate = sf.read(io.BytesIO(output.data))
        assert got_rate == rate
        durations.append(len(samples) / rate)
    pcm = final(
        await infer(
            stub, speech_request(text, format=common_pb2.AUDIO_FORMAT_PCM_S16LE, sample_rate=8000)
        )
    ).outputs[0]
    assert pcm.mime_type == "audio/pcm;encoding=s16le;rate=8000;channels=1"
    durations.append(len(np.frombuffer(pcm.data, dtype="<i2")) / 8000)
    # Every encoding holds the whole utterance; VITS varies phoneme durations from run to run.
    assert max(durations) < 1.15 * min(durations)


async def test_speed_changes_the_length(stub: inference_pb2_grpc.InferenceServiceAsyncStub) -> None:
    text = "Speaking rate is adjustable."
    lengths = []
    for speed in (0.5, 2.0):
        output = final(await infer(stub, speech_request(text, speed=speed, noise=0.0))).outputs[0]
        lengths.append(len(sf.read(io.BytesIO(output.data))[0]))
    assert lengths[0] > 2.5 * lengths[1]


async def test_cancel_stops_synthesis(stub: inference_pb2_grpc.InferenceServiceAsyncStub) -> None:
    sentences = SENTENCES * 3
    call = stub.Infer()
    await call.write(inference_pb2.InferRequest(request=speech_request(" ".join(sentences))))
    chunks = 0
    async for response in call:
        event = response.event
        if event.HasField("audio_chunk") and not chunks:
            cancel = common_pb2.Control(action=common_pb2.Control.ACTION_CANCEL)
            await call.write(inference_pb2.InferRequest(control=cancel))
        chunks += event.HasField("audio_chunk")
        if event.HasField("final"):
            assert event.final.finish_reason == common_pb2.FINISH_REASON_CANCELLED
            assert event.final.outputs[0].data
    assert 1 <= chunks < len(sentences)
