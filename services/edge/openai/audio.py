"""`/v1/audio/speech` and `/v1/audio/transcriptions` through the audio service.

Speech comes back as the audio service encodes it (WAV, PCM, FLAC, Opus); MP3 and AAC, which it
does not write, are transcoded here with FFmpeg (PyAV), in a worker thread, off the event loop.
OpenAI's voice names, which clients hard-code, take the model's default voice.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any, Literal

import av
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from google.protobuf import duration_pb2
from pydantic import Field

from genmesh.client import media_input
from genmesh.edge import errors
from genmesh.edge.openai.common import (
    CallerDep,
    MeshDep,
    OpenAIRequest,
    SettingsDep,
    binding_and_model,
    form_fields,
    generate,
    read_form,
    reject_unsupported,
    upload,
)
from genmesh.v1 import common_pb2

router = APIRouter()
OPENAI_VOICES = frozenset(
    [
        "alloy",
        "ash",
        "ballad",
        "coral",
        "echo",
        "fable",
        "nova",
        "onyx",
        "sage",
        "shimmer",
        "verse",
        "marin",
        "cedar",
    ]
)
# OpenAI's raw PCM: 24 kHz, signed 16-bit little-endian, mono.
PCM_RATE = 24000
# Each response format: what the audio service writes, and the FFmpeg muxer and encoder that
# turn its WAV into the format when it does not write it.
NATIVE = {
    "wav": (common_pb2.AUDIO_FORMAT_WAV, "audio/wav"),
    "pcm": (common_pb2.AUDIO_FORMAT_PCM_S16LE, "audio/pcm"),
    "flac": (common_pb2.AUDIO_FORMAT_FLAC, "audio/flac"),
    "opus": (common_pb2.AUDIO_FORMAT_OGG_OPUS, "audio/ogg"),
}
TRANSCODED = {"mp3": ("mp3", "libmp3lame", "audio/mpeg"), "aac": ("adts", "aac", "audio/aac")}
SPEECH_PARAMS = errors.Params(
    ("input",),
    "input",
    {"speech.format": "response_format", "speech.sample_rate": "response_format"},
)
TRANSCRIPTION_PARAMS = errors.Params(("file",), "file", {"transcription.initial_prompt": "prompt"})


class SpeechRequest(OpenAIRequest):
    model: str | None = None
    input: str = Field(min_length=1, max_length=4096)
    voice: str = ""
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float | None = Field(default=None, ge=0.25, le=4.0)
    instructions: str | None = None
    stream_format: Literal["audio", "sse"] | None = None


def transcode(wav: bytes, muxer: str, encoder: str) -> bytes:
    out = io.BytesIO()
    with av.open(io.BytesIO(wav), "r") as source, av.open(out, "w", format=muxer) as target:
        audio = source.streams.audio[0]
        stream = target.add_stream(encoder, rate=audio.rate)
        assert isinstance(stream, av.AudioStream)
        for frame in source.decode(audio):
            frame.pts = None
            target.mux(stream.encode(frame))
        target.mux(stream.encode(None))
    return out.getvalue()


@router.post("/v1/audio/speech")
async def speech(
    body: SpeechRequest, http: Request, mesh: MeshDep, caller: CallerDep, settings: SettingsDep
) -> Response:
    reject_unsupported(
        {
            "instructions": body.instructions,
            "stream_format": None if body.stream_format == "audio" else body.stream_format,
        }
    )
    binding, model = binding_and_model(body.model, settings.aliases("speech"))
    fmt, mime = NATIVE.get(body.response_format, NATIVE["wav"])
    request = common_pb2.GenerateRequest(
        request_id=caller.request_id,
        task=common_pb2.TASK_SPEECH,
        binding=binding,
        model=model,
        inputs=[common_pb2.InputItem(kind=common_pb2.CONTENT_KIND_TEXT, text=body.input)],
        speech=common_pb2.SpeechParameters(
            voice="" if body.voice in OPENAI_VOICES else body.voice,
            speed=body.speed,
            format=fmt,
            sample_rate=PCM_RATE if body.response_format == "pcm" else 0,
        ),
    )
    response = await generate(http, mesh, caller, request, SPEECH_PARAMS)
    if not (response.outputs and response.outputs[0].data):
        status, kind = errors.UPSTREAM
        raise errors.OpenAIError(status, "the speech service returned no audio", kind)
    data = response.outputs[0].data
    if body.response_format in TRANSCODED:
        muxer, encoder, mime = TRANSCODED[body.response_format]
        data = await asyncio.to_thread(transcode, data, muxer, encoder)
    return Response(data, media_type=mime)


class TranscriptionForm(OpenAIRequest):
    model: str | None = None
    language: str = ""
    prompt: str = ""
    response_format: Literal["json", "text", "srt", "verbose_json", "vtt"] = "json"
    temperature: float | None = None
    timestamp_granularities: list[Literal["word", "segment"]] = []
    include: list[str] = []
    stream: bool = False


def seconds(duration: duration_pb2.Duration) -> float:
    return duration.ToTimedelta().total_seconds()


def timestamp(value: float, decimal: str) -> str:
    millis = round(value * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def subtitles(transcript: common_pb2.Transcript, kind: Literal["srt", "vtt"]) -> str:
    decimal = "," if kind == "srt" else "."
    cues = []
    for index, segment in enumerate(transcript.segments, start=1):
        span = (
            f"{timestamp(seconds(segment.start), decimal)} --> "
            f"{timestamp(seconds(segment.end), decimal)}"
        )
        cue = f"{span}\n{segment.text.strip()}\n"
        cues.append(f"{index}\n{cue}" if kind == "srt" else cue)
    return ("WEBVTT\n\n" if kind == "vtt" else "") + "\n".join(cues)


def verbose(output: common_pb2.OutputItem, words: bool) -> dict[str, Any]:
    transcript = output.transcript
    segments = [
        {
            "id": i,
            "seek": s.seek,
            "start": seconds(s.start),
            "end": seconds(s.end),
            "text": s.text,
            "tokens": list(s.tokens),
            "temperature": s.temperature,
            "avg_logprob": s.avg_logprob,
            "compression_ratio": s.compression_ratio,
            "no_speech_prob": s.no_speech_prob,
        }
        for i, s in enumerate(transcript.segments)
    ]
    result: dict[str, Any] = {
        "task": "transcribe",
        "language": transcript.language,
        "duration": seconds(transcript.duration),
        "text": output.text,
        "segments": segments,
    }
    if words:
        result["words"] = [
            {"word": w.word.strip(), "start": seconds(w.start), "end": seconds(w.end)}
            for s in transcript.segments
            for w in s.words
        ]
    return result


@router.post("/v1/audio/transcriptions")
async def transcriptions(
    http: Request, mesh: MeshDep, caller: CallerDep, settings: SettingsDep
) -> Response:
    """Multipart: `file` (WAV, FLAC, MP3, OGG, M4A, WebM) and OpenAI's transcription fields."""
    async with read_form(http) as form:
        body = form_fields(form, TranscriptionForm)
        reject_unsupported(
            {"temperature": body.temperature, "include": body.include, "stream": body.stream}
        )
        audio = await upload(form, "file", settings.max_upload_bytes)
    assert audio is not None
    binding, model = binding_and_model(body.model, settings.aliases("transcription"))
    words = "word" in body.timestamp_granularities
    request = common_pb2.GenerateRequest(
        request_id=caller.request_id,
        task=common_pb2.TASK_TRANSCRIPTION,
        binding=binding,
        model=model,
        inputs=[media_input("audio", audio.data, audio.mime_type)],
        transcription=common_pb2.TranscriptionParameters(
            language=body.language, word_timestamps=words, initial_prompt=body.prompt
        ),
    )
    response = await generate(http, mesh, caller, request, TRANSCRIPTION_PARAMS)
    output = response.outputs[0] if response.outputs else common_pb2.OutputItem()
    if body.response_format == "text":
        return PlainTextResponse(output.text)
    if body.response_format in ("srt", "vtt"):
        kind: Literal["srt", "vtt"] = "srt" if body.response_format == "srt" else "vtt"
        return PlainTextResponse(subtitles(output.transcript, kind))
    if body.response_format == "verbose_json":
        return JSONResponse(verbose(output, words))
    return JSONResponse({"text": output.text})
