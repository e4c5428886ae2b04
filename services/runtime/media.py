"""Media types of the bytes requests carry: the leading bytes that identify each, and the other
names clients give them (SDKs and browsers send audio/mp3, audio/x-wav, audio/x-m4a, ...).

One table for the router, which checks every input's bytes against its type, the audio service,
which decodes by type, and the edge, which names an upload by its bytes when its client did not.
"""

from __future__ import annotations

import re

# The leading bytes of each media type the mesh reads (raw PCM has none).
SIGNATURES: dict[str, re.Pattern[bytes]] = {
    name: re.compile(pattern, re.DOTALL)
    for name, pattern in {
        "image/png": rb"\x89PNG\r\n\x1a\n",
        "image/jpeg": rb"\xff\xd8\xff",
        "image/webp": rb"RIFF.{4}WEBP",
        "audio/wav": rb"RIFF.{4}WAVE",
        "audio/flac": rb"fLaC",
        "audio/ogg": rb"OggS",
        # An ID3 tag, or straight into an MPEG audio frame (eleven sync bits).
        "audio/mpeg": rb"ID3|\xff[\xe0-\xff]",
        # ISO base media (M4A, MP4): a box of any size, then `ftyp`.
        "audio/mp4": rb".{4}ftyp",
        # Matroska's EBML header, which WebM (what browsers record) starts with.
        "audio/webm": rb"\x1a\x45\xdf\xa3",
        "audio/pcm": rb"",
        "audio/l16": rb"",
        "application/pdf": rb"%PDF",
    }.items()
}
ALIASES = {
    "image/jpg": "image/jpeg",
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
    "audio/vnd.wave": "audio/wav",
    "audio/x-flac": "audio/flac",
    "audio/mp3": "audio/mpeg",
    "audio/mpeg3": "audio/mpeg",
    "audio/x-mpeg": "audio/mpeg",
    "audio/x-mp3": "audio/mpeg",
    "audio/mpga": "audio/mpeg",
    "audio/opus": "audio/ogg",
    "audio/x-m4a": "audio/mp4",
    "audio/m4a": "audio/mp4",
}


def canonical(mime: str) -> str:
    """The lower-cased type without its parameters; an alias as the type it stands for."""
    name = mime.split(";", maxsplit=1)[0].strip().lower()
    return ALIASES.get(name, name)


def matches(mime: str, data: bytes) -> bool | None:
    """Whether `data` starts as a `mime` file does; None for a type the mesh does not read."""
    signature = SIGNATURES.get(canonical(mime))
    return None if signature is None else signature.match(data) is not None


def sniff(data: bytes) -> str:
    """The type whose leading bytes `data` has ("" if none does)."""
    for name, signature in SIGNATURES.items():
        if signature.pattern and signature.match(data):
            return name
    return ""
