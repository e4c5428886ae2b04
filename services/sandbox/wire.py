"""Framing between the sandbox service and its children: a 4-byte length, then a JSON object.

JSON rather than pickle because the service must never deserialise code from a child that may be
under an attacker's control; the size cap keeps a hostile child from exhausting the service.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

HEADER = struct.Struct(">I")
MAX_FRAME = 16 << 20


class FrameError(Exception):
    """A malformed or oversized frame."""


def encode(message: dict[str, Any]) -> bytes:
    """One frame holding `message`."""
    body = json.dumps(message, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    if len(body) > MAX_FRAME:
        raise FrameError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


def decode(body: bytes, object_hook: Any = None) -> dict[str, Any]:
    """The message in a frame body; anything but a JSON object is malformed."""
    try:
        message = json.loads(body, object_hook=object_hook)
    except ValueError as exc:
        raise FrameError(f"malformed frame: {exc}") from None
    if not isinstance(message, dict):
        raise FrameError("frame is not an object")
    return message


def size(header: bytes) -> int:
    """The body size announced by a frame header, checked against the cap."""
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise FrameError(f"frame of {length} bytes exceeds {MAX_FRAME}")
    return int(length)


def read_exact(fd: int, count: int) -> bytes:
    """Blocking read of exactly `count` bytes; EOFError when the peer is gone."""
    chunks = []
    while count:
        chunk = os.read(fd, min(count, 1 << 20))
        if not chunk:
            raise EOFError("peer closed")
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def write_all(fd: int, data: bytes) -> None:
    """Blocking write of all of `data`."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
