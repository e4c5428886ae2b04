"""Images, speech and transcription through the edge with the official OpenAI SDK, against the
real tti (genmesh's shapes model) and audio (Piper, Whisper) services."""

from __future__ import annotations

import base64
import io
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import av
import openai
import pytest
import soundfile as sf
from openai import AsyncOpenAI, OpenAI
from openai.types import Image as ImageData
from openai.types import ImagesResponse
from openai.types.audio import TranscriptionSegment
from PIL import Image

from tests.audio.conftest import word_error_rate
from tests.edge.conftest import async_sdk, multipart, raw, sdk
from tests.support import ServiceProcess

FAST = {"steps": 4, "seed": 3}
TEXT = "The train leaves at half past seven."


@pytest.fixture
def media(media_edge: ServiceProcess) -> Iterator[OpenAI]:
    with sdk(media_edge, timeout=300) as client:
        yield client


def items(result: ImagesResponse) -> list[ImageData]:
    assert result.data
    return result.data


def picture(b64: str | None) -> Image.Image:
    assert b64
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def test_image_generations(media: OpenAI) -> None:
    result = media.images.generate(
        model="shapes", prompt="a red circle", n=2, size="48x64", extra_body=FAST
    )
    assert len(items(result)) == 2
    images = [picture(item.b64_json) for item in items(result)]
    assert {(i.format, i.size) for i in images} == {("PNG", (48, 64))}
    again = media.images.generate(model="dall-e-2", prompt="a red circle", extra_body=FAST)
    assert picture(items(again)[0].b64_json).format == "PNG"
    assert media.models.retrieve("dall-e-2").id == "dall-e-2"
    assert media.models.retrieve("whisper-1").id == "whisper-1"


async def test_async_image_as_data_url(media_edge: ServiceProcess) -> None:
    async with async_sdk(media_edge, timeout=300) as client:
        assert isinstance(client, AsyncOpenAI)
        result = await client.images.generate(
            prompt="a blue square", response_format="url", extra_body=FAST
        )
    url = items(result)[0].url
    assert url is not None
    assert url.startswith("data:image/png;base64,")
    assert picture(url.split(",", 1)[1]).format == "PNG"


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def gif(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="GIF")
    return out.getvalue()


def test_image_edits_with_a_transparent_mask(media: OpenAI) -> None:
    source = Image.new("RGB", (32, 32), "blue")
    mask = Image.new("RGBA", (32, 32), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (8, 8, 24, 24))
    result = media.images.edit(
        model="shapes",
        image=("in.png", png(source), "image/png"),
        mask=("mask.png", png(mask), "image/png"),
        prompt="a yellow circle",
        extra_body=FAST,
    )
    edited = picture(items(result)[0].b64_json).convert("RGB")
    assert edited.size == (32, 32)
    # Outside the transparent square the mask keeps the blue picture; inside it is repainted.
    assert edited.getpixel((1, 1)) == (0, 0, 255)
    assert any(edited.getpixel((x, y)) != (0, 0, 255) for x in range(8, 24) for y in range(8, 24))


def test_a_palette_image_with_a_transparent_colour_marks_the_area(media: OpenAI) -> None:
    """A palette PNG whose colour 1 is transparent (tRNS): only that area is repainted."""
    source = Image.new("P", (32, 32), 0)
    source.putpalette([0, 0, 255, 0, 0, 0])
    source.paste(1, (8, 8, 24, 24))
    out = io.BytesIO()
    source.save(out, format="PNG", transparency=1)
    result = media.images.edit(
        model="shapes",
        image=("in.png", out.getvalue(), "image/png"),
        prompt="a yellow circle",
        extra_body=FAST,
    )
    edited = picture(items(result)[0].b64_json).convert("RGB")
    assert edited.getpixel((1, 1)) == (0, 0, 255)
    assert edited.getpixel((30, 30)) == (0, 0, 255)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares a size and holds almost nothing: a decompression bomb's shape."""
    image = Image.new("L", (1, 1))
    data = bytearray(png(image))
    # IHDR's width and height sit right after the signature, length and type (16 bytes).
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    chunk = data[12:29]
    data[29:33] = zlib.crc32(chunk).to_bytes(4, "big")
    return bytes(data)


@pytest.mark.parametrize(
    ("files", "param"),
    [
        ({"image": png_header(20000, 20000)}, "image"),
        ({"image": png_header(5000, 5000)}, "image"),
        ({"image": png(Image.new("RGB", (16, 16))), "mask": png_header(20000, 20000)}, "mask"),
        ({"image": png(Image.new("RGB", (16, 16))), "mask": png(Image.new("L", (8, 8)))}, "mask"),
        ({"image": gif(Image.new("RGB", (16, 16)))}, "image"),
    ],
)
def test_unusable_images_are_400_naming_them(
    media_edge: ServiceProcess, files: dict[str, bytes], param: str
) -> None:
    parts = {name: (f"{name}.png", data, "image/png") for name, data in files.items()}
    body, kind = multipart({"prompt": "x", "model": "shapes"}, parts)
    answer = raw(media_edge, "POST", "/v1/images/edits", body, {"Content-Type": kind})
    assert answer.status == 400, answer.body
    assert answer.json()["error"]["param"] == param
    assert raw(media_edge, "GET", "/health").json() == {"status": "ok"}


def test_image_errors_name_the_parameter(media: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        media.images.generate(model="shapes", prompt="x", size="4096x4096", extra_body=FAST)
    assert caught.value.param == "size"
    with pytest.raises(openai.BadRequestError) as caught:
        media.images.generate(model="shapes", prompt="x", size="big")
    assert caught.value.param == "size"
    with pytest.raises(openai.BadRequestError) as caught:
        media.images.edit(image=("in.png", b"not a picture", "image/png"), prompt="x")
    assert caught.value.param == "image"


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "aac", "opus"])
def test_speech_formats(media: OpenAI, fmt: str) -> None:
    audio = media.audio.speech.create(
        model="tts-1",
        voice="alloy",
        input="Hello there.",
        response_format=fmt,  # type: ignore[arg-type]
    ).content
    with av.open(io.BytesIO(audio), "r") as container:
        stream = container.streams.audio[0]
        frames = list(container.decode(stream))
    assert frames
    assert sum(f.samples for f in frames) > stream.rate // 4


def test_speech_pcm_is_24khz_16_bit(media: OpenAI) -> None:
    pcm = media.audio.speech.create(
        model="piper", voice="alloy", input="Hello there.", response_format="pcm"
    ).content
    samples, rate = sf.read(
        io.BytesIO(pcm), format="RAW", samplerate=24000, channels=1, subtype="PCM_16"
    )
    assert rate == 24000
    assert len(samples) > 24000 // 4


@pytest.mark.parametrize("fmt", ["json", "text", "verbose_json", "srt", "vtt"])
def test_speech_then_transcription(media: OpenAI, fmt: str) -> None:
    speech = media.audio.speech.create(
        model="tts-1", voice="alloy", input=TEXT, response_format="wav"
    ).content
    result = media.audio.transcriptions.create(
        model="whisper-1",
        file=("speech.wav", speech, "audio/wav"),
        response_format=fmt,  # type: ignore[call-overload]
        timestamp_granularities=["word", "segment"] if fmt == "verbose_json" else openai.omit,
    )
    if fmt == "json":
        assert word_error_rate(TEXT, result.text) <= 0.15, result.text
    elif fmt == "text":
        assert word_error_rate(TEXT, str(result)) <= 0.15, result
    elif fmt == "verbose_json":
        assert result.language == "en"
        assert result.duration > 1
        assert result.segments and result.segments[0].end > result.segments[0].start
        for segment in result.segments:
            # Every field of OpenAI's segment, with Whisper's measures of a clear recording.
            TranscriptionSegment.model_validate(segment.model_dump())
            assert segment.tokens and segment.temperature == 0
            assert -1 < segment.avg_logprob < 0 and segment.no_speech_prob < 0.5
            assert 0 < segment.compression_ratio < 2.4
        assert result.words and "train" in [w.word.lower().strip(".,") for w in result.words]
    else:
        lines = str(result).strip().splitlines()
        arrow = next(line for line in lines if "-->" in line)
        assert (arrow[8] == ",") == (fmt == "srt")
        assert lines[0] == ("1" if fmt == "srt" else "WEBVTT")


def recorded(wav: bytes, muxer: str, encoder: str, rate: int) -> bytes:
    """`wav` as a phone or browser records it (M4A, WebM Opus, MP3)."""
    out = io.BytesIO()
    with av.open(io.BytesIO(wav), "r") as source, av.open(out, "w", format=muxer) as target:
        stream = target.add_stream(encoder, rate=rate)
        assert isinstance(stream, av.AudioStream)
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        for frame in source.decode(audio=0):
            for piece in resampler.resample(frame):
                target.mux(stream.encode(piece))
        target.mux(stream.encode(None))
    return out.getvalue()


@pytest.mark.parametrize(
    ("container", "upload"),
    [
        # The SDK's `file=bytes`: no name, application/octet-stream.
        (("wav", "pcm_s16le", 22050), lambda data: data),
        (("ipod", "aac", 22050), lambda data: ("voice", data, "audio/x-m4a")),
        (("webm", "libopus", 48000), lambda data: ("clip.webm", data, "audio/webm")),
        (("mp3", "libmp3lame", 22050), lambda data: ("speech", data, "audio/mp3")),
    ],
    ids=["unnamed-wav", "m4a", "webm", "mp3-alias"],
)
def test_transcription_reads_what_phones_browsers_and_sdks_send(
    media: OpenAI, container: tuple[str, str, int], upload: Callable[[bytes], Any]
) -> None:
    """Each of these was a 400 ("invalid request"): an unnamed upload had no type, and these
    types or their other names were not read."""
    speech = media.audio.speech.create(
        model="tts-1", voice="alloy", input=TEXT, response_format="wav"
    ).content
    result = media.audio.transcriptions.create(
        model="whisper-1", file=upload(recorded(speech, *container))
    )
    assert word_error_rate(TEXT, result.text) <= 0.15, result.text


def test_audio_errors_name_the_parameter(media: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        media.audio.speech.create(model="piper", voice="alloy", input="Hi.", speed=9)
    assert caught.value.param == "speed"
    with pytest.raises(openai.BadRequestError) as caught:
        media.audio.transcriptions.create(
            model="whisper-1", file=("noise.wav", b"RIFF not really", "audio/wav")
        )
    assert caught.value.param == "file"
    with pytest.raises(openai.BadRequestError) as caught:
        media.audio.speech.create(
            model="piper", voice="alloy", input="Hi.", instructions="whisper it"
        )
    assert caught.value.param == "instructions"
