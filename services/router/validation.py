"""Checks on public requests, so bad input is refused at the edge with field-level details."""

from __future__ import annotations

import uuid

from genmesh.runtime import errors
from genmesh.runtime.errors import FieldViolation
from genmesh.v1 import common_pb2

# Media types the mesh understands, with the leading bytes a real payload of that type has.
SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/webp": (b"RIFF",),
    "audio/wav": (b"RIFF",),
    "audio/x-wav": (b"RIFF",),
    "audio/wave": (b"RIFF",),
    "audio/flac": (b"fLaC",),
    "audio/ogg": (b"OggS",),
    "audio/mpeg": (b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"),
    "audio/l16": (b"",),
    "application/pdf": (b"%PDF",),
}
KIND_PREFIX = {
    common_pb2.CONTENT_KIND_TEXT: ("text/",),
    common_pb2.CONTENT_KIND_IMAGE: ("image/",),
    common_pb2.CONTENT_KIND_AUDIO: ("audio/",),
    common_pb2.CONTENT_KIND_VIDEO: ("video/",),
    common_pb2.CONTENT_KIND_DOCUMENT: ("application/", "text/"),
    common_pb2.CONTENT_KIND_JSON: ("application/json",),
}
MAX_REQUEST_ID = 128


def request_id(value: str) -> str:
    """The caller's id, or a new one; it is echoed in metadata, which carries printable ASCII."""
    if not value:
        return uuid.uuid4().hex
    if len(value) > MAX_REQUEST_ID or not (value.isascii() and value.isprintable()):
        raise errors.invalid_argument(
            "invalid request_id",
            FieldViolation(
                "request_id", f"must be printable ASCII and at most {MAX_REQUEST_ID} chars"
            ),
        )
    return value


def task(value: int) -> None:
    """Enums are open on the wire: any number arrives, and only the known ones mean a task."""
    if value not in common_pb2.Task.values():
        known = ", ".join(common_pb2.Task.keys())
        raise errors.invalid_argument(
            f"unknown task {value}", FieldViolation("task", f"must be one of {known}")
        )


def _item_violations(index: int, item: common_pb2.InputItem) -> list[FieldViolation]:
    where = f"inputs[{index}]"
    payload = item.WhichOneof("payload")
    mime = item.mime_type.split(";")[0].strip().lower()
    if payload is None:
        return [FieldViolation(where, "needs a payload: text, data or uri")]
    if item.kind == common_pb2.CONTENT_KIND_UNSPECIFIED and payload != "text":
        return [FieldViolation(f"{where}.kind", "must be set for non-text payloads")]
    prefixes = KIND_PREFIX.get(item.kind)
    if mime and prefixes and not mime.startswith(prefixes):
        kind = common_pb2.ContentKind.Name(item.kind)
        return [FieldViolation(f"{where}.mime_type", f"'{mime}' does not match kind {kind}")]
    if payload == "data":
        if not mime:
            return [FieldViolation(f"{where}.mime_type", "is required for bytes payloads")]
        if not item.data:
            return [FieldViolation(f"{where}.data", "is empty")]
        signatures = SIGNATURES.get(mime)
        if signatures is None:
            return [FieldViolation(f"{where}.mime_type", f"unsupported media type '{mime}'")]
        if not item.data.startswith(signatures):
            return [FieldViolation(f"{where}.data", f"is not valid {mime} data")]
    if payload == "text" and item.kind not in (
        common_pb2.CONTENT_KIND_UNSPECIFIED,
        common_pb2.CONTENT_KIND_TEXT,
        common_pb2.CONTENT_KIND_DOCUMENT,
        common_pb2.CONTENT_KIND_JSON,
    ):
        return [FieldViolation(f"{where}.text", "a text payload needs a text kind")]
    return []


def check_request(
    request: common_pb2.GenerateRequest, max_bytes: int, needs_inputs: bool = True
) -> None:
    """Raises INVALID_ARGUMENT listing every problem found."""
    size = request.ByteSize()
    if size > max_bytes:
        raise errors.invalid_argument(
            "request too large",
            FieldViolation("inputs", f"request is {size} bytes; the limit is {max_bytes}"),
            reason="REQUEST_TOO_LARGE",
        )
    violations: list[FieldViolation] = []
    if needs_inputs and not request.inputs:
        violations.append(FieldViolation("inputs", "at least one input is required"))
    for index, item in enumerate(request.inputs):
        violations.extend(_item_violations(index, item))
    if violations:
        raise errors.invalid_argument("invalid request", *violations)
