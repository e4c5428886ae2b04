"""`genmesh talk`: a spoken conversation through the router, from a WAV file to a WAV file.

`VoiceCall` is the client side of a voice conversation (Converse opened by a VoiceConfig):
messages are sent as they are ready, while the events are read as they come.
"""

from __future__ import annotations

import array
import asyncio
import sys
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import click
import grpc

from genmesh.cli.audio import address_option, fail, key_option
from genmesh.client import Client
from genmesh.runtime.timing import duration
from genmesh.v1 import common_pb2, generation_pb2

#: Streamed audio goes out in chunks of this many seconds.
CHUNK_SECONDS = 0.1
PCM = "audio/pcm"


@dataclass
class Pcm:
    """Mono 16-bit little-endian PCM."""

    data: bytes
    rate: int

    @property
    def seconds(self) -> float:
        return len(self.data) / 2 / self.rate

    def chunks(self, seconds: float = CHUNK_SECONDS) -> list[common_pb2.AudioChunk]:
        size = max(int(self.rate * seconds), 1) * 2
        return [
            common_pb2.AudioChunk(
                data=self.data[i : i + size], mime_type=PCM, sample_rate=self.rate
            )
            for i in range(0, len(self.data), size)
        ]


def read_wav(path: Path) -> Pcm:
    """A 16-bit PCM WAV file, its channels mixed down to one."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise click.BadParameter("the WAV file must hold 16-bit PCM", param_hint="INPUT")
        channels, rate = wav.getnchannels(), wav.getframerate()
        frames = wav.readframes(wav.getnframes())
    if channels == 1:
        return Pcm(frames, rate)
    samples = array.array("h", frames)
    if sys.byteorder == "big":
        samples.byteswap()
    planes = (samples[c::channels] for c in range(channels))
    mixed = array.array("h", (sum(frame) // channels for frame in zip(*planes, strict=True)))
    if sys.byteorder == "big":
        mixed.byteswap()
    return Pcm(mixed.tobytes(), rate)


def write_wav(path: Path, pcm: Pcm) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(pcm.rate)
        wav.writeframes(pcm.data)


def voice_config(
    *,
    binding: str = "",
    personality: str = "",
    system: str = "",
    max_tokens: int | None = None,
    temperature: float | None = None,
    voice: str = "",
    language: str = "",
    silence: float | None = None,
) -> generation_pb2.VoiceConfig:
    """A voice conversation whose replies come as raw PCM, ready to play or to write out."""
    chat = common_pb2.GenerateRequest(
        task=common_pb2.TASK_TEXT,
        binding=binding,
        personality=personality,
        text=common_pb2.TextParameters(max_tokens=max_tokens, temperature=temperature),
    )
    if system:
        chat.inputs.add(
            kind=common_pb2.CONTENT_KIND_TEXT,
            role=common_pb2.INPUT_ROLE_SYSTEM_CONTEXT,
            text=system,
        )
    transcription = common_pb2.TranscriptionParameters(language=language)
    if silence is not None:
        transcription.end_of_speech_silence.CopyFrom(duration(silence))
    return generation_pb2.VoiceConfig(
        chat=chat,
        transcription=transcription,
        speech=common_pb2.SpeechParameters(voice=voice, format=common_pb2.AUDIO_FORMAT_PCM_S16LE),
    )


class VoiceCall:
    """One voice conversation: `send` and the controls queue messages, iterating reads events."""

    def __init__(
        self, client: Client, config: generation_pb2.VoiceConfig, timeout: float | None = None
    ) -> None:
        self._outgoing: asyncio.Queue[generation_pb2.ConverseRequest | None] = asyncio.Queue()
        self._outgoing.put_nowait(generation_pb2.ConverseRequest(voice=config))
        self.call = client.generation.Converse(
            self._requests(), metadata=client.metadata, timeout=timeout
        )

    async def _requests(self) -> AsyncIterator[generation_pb2.ConverseRequest]:
        while (message := await self._outgoing.get()) is not None:
            yield message

    def send(self, *chunks: common_pb2.AudioChunk) -> None:
        for chunk in chunks:
            self._outgoing.put_nowait(generation_pb2.ConverseRequest(audio=chunk))

    async def stream(self, pcm: Pcm, seconds: float = CHUNK_SECONDS) -> None:
        """Sends the audio at the pace it plays, as a microphone would: each chunk once the
        time it lasts has passed."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, chunk in enumerate(pcm.chunks(seconds), 1):
            await asyncio.sleep(max(0.0, start + index * seconds - loop.time()))
            self.send(chunk)

    def ask(self, text: str, turn_id: str = "") -> None:
        """A typed turn: answered aloud like a spoken one."""
        prompt = common_pb2.InputItem(kind=common_pb2.CONTENT_KIND_TEXT, text=text)
        turn = generation_pb2.ConverseTurn(turn_id=turn_id, inputs=[prompt])
        self._outgoing.put_nowait(generation_pb2.ConverseRequest(turn=turn))

    def control(self, action: common_pb2.Control.Action.ValueType) -> None:
        control = common_pb2.Control(action=action)
        self._outgoing.put_nowait(generation_pb2.ConverseRequest(control=control))

    def end_of_input(self) -> None:
        self.control(common_pb2.Control.ACTION_END_OF_INPUT)

    def close(self) -> None:
        """No more messages: the conversation ends once the last reply is done."""
        self._outgoing.put_nowait(None)

    def hang_up(self) -> None:
        self.call.cancel()

    async def __aiter__(self) -> AsyncIterator[generation_pb2.ConverseResponse]:
        async for response in self.call:
            yield response


@dataclass
class Turn:
    """What one turn of a voice conversation said, in and out."""

    turn_id: str
    transcript: str = ""
    reply: list[str] = field(default_factory=list)
    audio: list[bytes] = field(default_factory=list)
    rate: int = 0
    final: common_pb2.GenerateResponse | None = None

    def take(self, event: common_pb2.StreamEvent) -> None:
        if event.HasField("transcript") and event.transcript.is_final:
            self.transcript = event.transcript.text
        elif event.HasField("text_delta"):
            self.reply.append(event.text_delta.text)
        elif event.HasField("audio_chunk"):
            self.audio.append(event.audio_chunk.data)
            self.rate = event.audio_chunk.sample_rate
        elif event.HasField("final"):
            self.final = event.final

    @property
    def text(self) -> str:
        return "".join(self.reply)

    @property
    def pcm(self) -> Pcm:
        return Pcm(b"".join(self.audio), self.rate)


@click.command()
@address_option
@key_option
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--binding", default="", help="Chat binding (default: the text default).")
@click.option("--personality", default="")
@click.option("--system", default="", help="System prompt.")
@click.option("--max-tokens", type=int, default=None)
@click.option("--voice", default="", help="Voice of the replies (default: the binding's).")
@click.option("--language", default="", help="ISO 639-1 code of the speech (default: detect).")
@click.option(
    "--silence", type=float, default=None, help="Seconds of silence that end a turn (default 0.5)."
)
@click.option("--realtime", is_flag=True, help="Send the audio at the pace it plays.")
@click.argument(
    "source", metavar="INPUT", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
def talk(
    address: str,
    api_key: str | None,
    output: Path,
    binding: str,
    personality: str,
    system: str,
    max_tokens: int | None,
    voice: str,
    language: str,
    silence: float | None,
    realtime: bool,
    source: Path,
) -> None:
    """Speak INPUT (a 16-bit WAV file) to the mesh and write its spoken replies to OUTPUT,
    printing what was heard and what was answered."""
    speech = read_wav(source)
    config = voice_config(
        binding=binding,
        personality=personality,
        system=system,
        max_tokens=max_tokens,
        voice=voice,
        language=language,
        silence=silence,
    )

    async def run() -> list[Turn]:
        turns: dict[str, Turn] = {}
        async with Client(address, api_key) as client:
            call = VoiceCall(client, config)
            if realtime:
                await call.stream(speech)
            else:
                call.send(*speech.chunks())
            call.end_of_input()
            call.close()
            async for response in call:
                turn = turns.setdefault(response.turn_id, Turn(response.turn_id))
                turn.take(response.event)
                event = response.event
                if event.HasField("transcript") and event.transcript.is_final:
                    click.echo(f"you: {event.transcript.text}")
                elif event.HasField("text_delta"):
                    if len(turn.reply) == 1:
                        click.echo("genmesh: ", nl=False)
                    click.echo(event.text_delta.text, nl=False)
                elif event.HasField("final"):
                    click.echo()
        return list(turns.values())

    try:
        turns = asyncio.run(run())
    except grpc.aio.AioRpcError as error:
        fail(error)
    spoken = [t.pcm for t in turns if t.audio]
    if not spoken:
        raise click.ClickException("no reply was spoken")
    write_wav(output, Pcm(b"".join(p.data for p in spoken), spoken[0].rate))
    click.echo(f"wrote {output} ({sum(p.seconds for p in spoken):.1f} s)", err=True)
