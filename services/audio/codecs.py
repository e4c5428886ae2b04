"""Audio encoding, decoding and resampling with real codec libraries (libsndfile, FFmpeg, soxr).

Raw PCM travels as headerless signed 16-bit little-endian mono; its media type names the layout
explicitly (``audio/pcm;encoding=s16le;rate=16000``) because ``audio/L16`` means big-endian
(RFC 2586), which is read too.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

from genmesh.runtime import media
from genmesh.v1 import common_pb2

Samples = npt.NDArray[np.float32]

WHISPER_RATE = 16000
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
MIN_RATE, MAX_RATE = 8000, 48000
PCM_MIME = "audio/pcm"
#: Raw PCM media types and their sample layout.
RAW_PCM = {PCM_MIME: "<i2", "audio/l16": ">i2"}

#: Media types accepted for whole-file transcription, by container (their aliases too:
#: `media.canonical`). MP4 (M4A) and WebM are what phones and browsers record.
DECODABLE_MIME_TYPES = frozenset(
    {"audio/wav", "audio/flac", "audio/mpeg", "audio/ogg", "audio/mp4", "audio/webm"}
)


class CodecError(ValueError):
    """Audio that cannot be read or written as asked; `field` names the request field at fault."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Encoding:
    """A resolved output encoding: the format and the rate the audio is written at."""

    format: common_pb2.AudioFormat.ValueType
    sample_rate: int

    @property
    def mime_type(self) -> str:
        return {
            common_pb2.AUDIO_FORMAT_PCM_S16LE: pcm_mime(self.sample_rate),
            common_pb2.AUDIO_FORMAT_FLAC: "audio/flac",
            common_pb2.AUDIO_FORMAT_OGG_OPUS: "audio/ogg;codecs=opus",
        }.get(self.format, "audio/wav")


def pcm_mime(rate: int) -> str:
    return f"{PCM_MIME};encoding=s16le;rate={rate};channels=1"


def media_type(mime: str) -> tuple[str, dict[str, str]]:
    """Splits ``type/subtype;k=v`` into the lower-cased type and its parameters."""
    head, *params = (p.strip() for p in mime.split(";"))
    pairs = (p.split("=", 1) for p in params if "=" in p)
    return head.lower(), {k.strip().lower(): v.strip() for k, v in pairs}


def resolve_encoding(
    fmt: common_pb2.AudioFormat.ValueType, requested_rate: int, native_rate: int
) -> Encoding:
    """Picks the output rate; Opus only runs at a few rates, so it takes the nearest one above."""
    if fmt not in common_pb2.AudioFormat.values():
        raise CodecError(f"unknown audio format {fmt}", "speech.format")
    if requested_rate and not MIN_RATE <= requested_rate <= MAX_RATE:
        raise CodecError(
            f"sample rate must be 0 or within {MIN_RATE}..{MAX_RATE} Hz", "speech.sample_rate"
        )
    rate = requested_rate or native_rate
    if fmt == common_pb2.AUDIO_FORMAT_OGG_OPUS and rate not in OPUS_RATES:
        if requested_rate:
            raise CodecError(
                f"Opus supports only {', '.join(map(str, OPUS_RATES))} Hz", "speech.sample_rate"
            )
        rate = next(r for r in OPUS_RATES if r >= rate)
    return Encoding(fmt or common_pb2.AUDIO_FORMAT_WAV, rate)


def resample(samples: Samples, from_rate: int, to_rate: int) -> Samples:
    if from_rate == to_rate or samples.size == 0:
        return samples
    out: Samples = soxr.resample(samples, from_rate, to_rate).astype(np.float32, copy=False)
    return out


def to_int16(samples: Samples) -> npt.NDArray[np.int16]:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)


def encode(samples: Samples, rate: int, encoding: Encoding) -> bytes:
    """Encodes mono float samples in [-1, 1] as a self-contained file (or raw PCM)."""
    audio = resample(samples, rate, encoding.sample_rate)
    if encoding.format == common_pb2.AUDIO_FORMAT_PCM_S16LE:
        return to_int16(audio).astype("<i2").tobytes()
    container, subtype = {
        common_pb2.AUDIO_FORMAT_FLAC: ("FLAC", "PCM_16"),
        common_pb2.AUDIO_FORMAT_OGG_OPUS: ("OGG", "OPUS"),
    }.get(encoding.format, ("WAV", "PCM_16"))
    buf = io.BytesIO()
    sf.write(buf, audio, encoding.sample_rate, format=container, subtype=subtype)
    return buf.getvalue()


def pcm_to_float(data: bytes, kind: str = PCM_MIME) -> Samples:
    """Samples of raw 16-bit PCM of one of the RAW_PCM media types."""
    if len(data) % 2:
        raise CodecError("raw 16-bit PCM needs an even number of bytes")
    return (np.frombuffer(data, dtype=RAW_PCM[kind]).astype(np.float32) / 32768.0).astype(
        np.float32
    )


def pcm_rate(params: dict[str, str], rate: int = 0) -> int:
    """The sample rate of raw PCM described by media type parameters; only s16le mono is read."""
    if params.get("encoding", "s16le") != "s16le" or params.get("channels", "1") != "1":
        raise CodecError("raw PCM must be s16le mono")
    text = str(rate) if rate else params.get("rate", str(WHISPER_RATE))
    if not text.isdigit() or not MIN_RATE <= int(text) <= MAX_RATE:
        raise CodecError(f"PCM rate must be {MIN_RATE}..{MAX_RATE} Hz, got {text!r}")
    return int(text)


def decode(data: bytes, mime: str, rate: int = WHISPER_RATE) -> Samples:
    """Decodes a WAV/FLAC/MP3/OGG file (FFmpeg through PyAV) or raw PCM to mono float at ``rate``.

    Raises CodecError for unsupported media types and for bytes FFmpeg cannot decode.
    """
    kind, params = media_type(mime)
    kind = media.canonical(kind)
    if kind in RAW_PCM:
        return resample(pcm_to_float(data, kind), pcm_rate(params), rate)
    if kind not in DECODABLE_MIME_TYPES:
        raise CodecError(f"unsupported audio type {kind!r}")
    if not data:
        raise CodecError("the audio is empty")
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    pieces: list[Samples] = []
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise CodecError("no audio stream in the data")
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray().reshape(-1).astype(np.float32))
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().reshape(-1).astype(np.float32))
    except av.FFmpegError as exc:
        raise CodecError(f"cannot decode the audio as {kind}: {exc.strerror or exc}") from exc
    if not pieces:
        raise CodecError("the audio holds no samples")
    return np.concatenate(pieces)
