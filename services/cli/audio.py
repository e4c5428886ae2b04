"""`genmesh speak` and `genmesh transcribe`: speech out and in through the router."""

from __future__ import annotations

import asyncio
import mimetypes
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import click
import grpc
from google.protobuf import json_format

from genmesh.client import DEFAULT_ADDRESS, Client, error_details, media_input
from genmesh.runtime import media
from genmesh.v1 import common_pb2

FORMATS = {
    "wav": common_pb2.AUDIO_FORMAT_WAV,
    "pcm": common_pb2.AUDIO_FORMAT_PCM_S16LE,
    "flac": common_pb2.AUDIO_FORMAT_FLAC,
    "ogg": common_pb2.AUDIO_FORMAT_OGG_OPUS,
}
SUFFIX_FORMATS = {
    ".wav": "wav",
    ".pcm": "pcm",
    ".raw": "pcm",
    ".flac": "flac",
    ".ogg": "ogg",
    ".opus": "ogg",
}
address_option = click.option(
    "--address", default=DEFAULT_ADDRESS, envvar="GENMESH_ADDRESS", show_default=True
)
key_option = click.option("--api-key", envvar="GENMESH_API_KEY", default=None)


def fail(error: grpc.aio.AioRpcError) -> NoReturn:
    """One line per problem, naming the field at fault, and exit status 1."""
    details = error_details(error)
    click.echo(f"error: {details.code.name}: {details.message}", err=True)
    for field, description in details.violations.items():
        click.echo(f"  {field}: {description}", err=True)
    raise SystemExit(1)


def stream_to_final(
    address: str,
    api_key: str | None,
    request: common_pb2.GenerateRequest,
    progress: Callable[[common_pb2.StreamEvent], None],
) -> common_pb2.GenerateResponse:
    """Streams REQUEST, showing each event through PROGRESS as it arrives, and returns the final
    response; a failed call exits with its details."""

    async def run() -> common_pb2.GenerateResponse:
        async with Client(address, api_key) as client:
            async for event in client.generate_stream(request):
                if event.HasField("final"):
                    return event.final
                progress(event)
        raise click.ClickException("the stream ended without a result")

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as error:
        fail(error)


@click.command()
@address_option
@key_option
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--voice", default="", help="Voice name (default: the binding's voice).")
@click.option("--speed", type=float, default=None, help="Speaking rate; 1 is normal.")
@click.option("--noise", type=float, default=None, help="Voice variability (VITS noise scale).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(list(FORMATS)),
    default=None,
    help="Output encoding (default: from the file suffix, else wav).",
)
@click.option("--sample-rate", type=int, default=0, help="Output rate in Hz (default: native).")
@click.option("--binding", default="", help="Binding instance (default: the speech default).")
@click.argument("text")
def speak(
    address: str,
    api_key: str | None,
    output: Path,
    voice: str,
    speed: float | None,
    noise: float | None,
    fmt: str | None,
    sample_rate: int,
    binding: str,
    text: str,
) -> None:
    """Synthesise TEXT to an audio file, reporting each sentence as it is spoken."""
    name = fmt or SUFFIX_FORMATS.get(output.suffix.lower(), "wav")
    request = common_pb2.GenerateRequest(
        task=common_pb2.TASK_SPEECH,
        binding=binding,
        inputs=[common_pb2.InputItem(kind=common_pb2.CONTENT_KIND_TEXT, text=text)],
        speech=common_pb2.SpeechParameters(
            voice=voice, speed=speed, noise=noise, format=FORMATS[name], sample_rate=sample_rate
        ),
    )

    def progress(event: common_pb2.StreamEvent) -> None:
        if event.HasField("audio_chunk"):
            chunk = event.audio_chunk
            click.echo(f"[{chunk.sequence + 1}] {chunk.text}", err=True)

    audio = stream_to_final(address, api_key, request, progress).outputs[0]
    output.write_bytes(audio.data)
    click.echo(f"wrote {output} ({audio.mime_type}, {len(audio.data)} bytes)", err=True)


@click.command()
@address_option
@key_option
@click.option("--language", default="", help="ISO 639-1 code (default: detect).")
@click.option("--words", is_flag=True, help="Include per-word timestamps.")
@click.option("--binding", default="", help="Binding instance (default: the transcription one).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def transcribe(
    address: str,
    api_key: str | None,
    language: str,
    words: bool,
    binding: str,
    as_json: bool,
    file: Path,
) -> None:
    """Transcribe an audio FILE (WAV, FLAC, MP3, OGG, M4A or WebM), printing segments as they are
    ready."""
    data = file.read_bytes()
    # The bytes say what the file is; its name, for raw PCM and what has no signature.
    mime = media.sniff(data) or mimetypes.guess_type(file.name)[0] or ""
    request = common_pb2.GenerateRequest(
        task=common_pb2.TASK_TRANSCRIPTION,
        binding=binding,
        inputs=[media_input("audio", data, mime)],
        transcription=common_pb2.TranscriptionParameters(language=language, word_timestamps=words),
    )

    def progress(event: common_pb2.StreamEvent) -> None:
        if event.HasField("transcript") and not as_json:
            segment = event.transcript.segment
            start = segment.start.ToTimedelta().total_seconds()
            end = segment.end.ToTimedelta().total_seconds()
            click.echo(f"[{start:7.2f} - {end:7.2f}] {segment.text}")

    result = stream_to_final(address, api_key, request, progress)
    if as_json:
        sys.stdout.write(json_format.MessageToJson(result) + "\n")
