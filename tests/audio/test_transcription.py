"""Speech-to-text through the audio service: whole files in several containers and streaming."""

from __future__ import annotations

import base64
import io

import numpy as np
import soundfile as sf

from genmesh.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from tests.audio.conftest import (
    final,
    infer,
    normalise,
    speech_request,
    transcription_request,
    word_error_rate,
)

TEXT = "The library opens at nine in the morning. Children can borrow up to five books."
STREAMED = [
    "Good morning and welcome to the weekly team meeting.",
    "First we will review the results from last month.",
    "After that the design group will present the new prototype.",
    "Finally we will plan the schedule for the next quarter.",
]
RATE = 16000


async def speak_pcm(stub: inference_pb2_grpc.InferenceServiceAsyncStub, text: str) -> np.ndarray:
    request = speech_request(text, format=common_pb2.AUDIO_FORMAT_PCM_S16LE, sample_rate=RATE)
    return np.frombuffer(final(await infer(stub, request)).outputs[0].data, dtype="<i2")


def encode(samples: np.ndarray, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, RATE, format=fmt, subtype=subtype)
    return buf.getvalue()


async def test_files_in_each_container_are_transcribed(
    stub: inference_pb2_grpc.InferenceServiceAsyncStub,
) -> None:
    pcm = await speak_pcm(stub, TEXT)
    speech = pcm.astype(np.float32) / 32768
    files = {
        "audio/wav": encode(pcm, "WAV", "PCM_16"),
        "audio/flac": encode(speech, "FLAC"),
        "audio/mpeg": encode(speech, "MP3"),
        "audio/ogg": encode(speech, "OGG", "VORBIS"),
    }
    for mime, data in files.items():
        events = await infer(stub, transcription_request(data, mime))
        output = final(events).outputs[0]
        transcript = output.transcript
        assert transcript.language == "en", mime
        assert transcript.language_probability > 0.5
        assert abs(transcript.duration.ToTimedelta().total_seconds() - len(pcm) / RATE) < 0.2
        assert word_error_rate(TEXT, output.text) <= 0.10, (mime, output.text)
        streamed = [e.transcript.segment for e in events if e.HasField("transcript")]
        assert list(transcript.segments) == streamed
        starts = [s.start.ToTimedelta() for s in transcript.segments]
        assert starts == sorted(starts)


async def test_word_timestamps_and_data_uri(
    stub: inference_pb2_grpc.InferenceServiceAsyncStub,
) -> None:
    text = "Green bottles are standing on the wall."
    pcm = await speak_pcm(stub, text)
    uri = "data:audio/wav;base64," + base64.b64encode(encode(pcm, "WAV", "PCM_16")).decode()
    request = transcription_request(word_timestamps=True, language="en")
    request.inputs.append(common_pb2.InputItem(kind=common_pb2.CONTENT_KIND_AUDIO, uri=uri))
    output = final(await infer(stub, request)).outputs[0]
    words = [w for s in output.transcript.segments for w in s.words]
    assert normalise(" ".join(w.word for w in words)) == normalise(text)
    ends = [w.end.ToTimedelta() for w in words]
    assert ends == sorted(ends)
    assert all(w.start.ToTimedelta() <= w.end.ToTimedelta() for w in words)
    assert all(0 < w.probability <= 1 for w in words)


async def test_streamed_speech_gets_partials_then_finals_before_the_end(
    stub: inference_pb2_grpc.InferenceServiceAsyncStub,
) -> None:
    pause = np.zeros(RATE * 3 // 2, dtype="<i2")  # longer than the 0.5 s that ends a segment
    sentences = [await speak_pcm(stub, s) for s in STREAMED]
    call = stub.Infer()
    await call.write(inference_pb2.InferRequest(request=transcription_request()))

    async def send(samples: np.ndarray) -> None:
        for start in range(0, len(samples), RATE // 10):  # 100 ms chunks
            chunk = common_pb2.AudioChunk(
                data=samples[start : start + RATE // 10].tobytes(),
                mime_type="audio/pcm;encoding=s16le",
                sample_rate=RATE,
            )
            await call.write(inference_pb2.InferRequest(audio=chunk))

    async def next_update() -> common_pb2.TranscriptUpdate:
        response = await call.read()
        assert isinstance(response, inference_pb2.InferResponse), response
        assert response.event.HasField("transcript"), response.event
        return response.event.transcript

    # Mid-sentence (no pause yet) the open segment can only be reported as a partial.
    await send(sentences[0])
    partial = await next_update()
    assert not partial.is_final
    assert partial.text
    # The pause ends the segment, still long before the end of the input.
    await send(pause)
    update = partial
    while not update.is_final:
        update = await next_update()
    assert word_error_rate(STREAMED[0], update.text) <= 0.2, update.text
    assert update.segment.start.ToTimedelta().total_seconds() < 0.5

    for samples in sentences[1:]:
        await send(np.concatenate([samples, pause]))
    await call.write(
        inference_pb2.InferRequest(
            control=common_pb2.Control(action=common_pb2.Control.ACTION_END_OF_INPUT)
        )
    )
    rest = [response.event async for response in call]
    result = final(rest).outputs[0]
    finals = [update.segment] + [
        e.transcript.segment for e in rest if e.HasField("transcript") and e.transcript.is_final
    ]
    assert list(result.transcript.segments) == finals
    assert len(finals) == len(STREAMED)
    assert result.transcript.language == "en"
    assert word_error_rate(" ".join(STREAMED), result.text) <= 0.10, result.text
    bounds = [(s.start.ToTimedelta(), s.end.ToTimedelta()) for s in finals]
    assert all(a < b for a, b in bounds)
    assert all(bounds[i][1] <= bounds[i + 1][0] for i in range(len(bounds) - 1))
    total = sum(len(s) + len(pause) for s in sentences) / RATE
    assert abs(result.transcript.duration.ToTimedelta().total_seconds() - total) < 0.1
