"""Checks on public requests, so bad input is refused at the edge with field-level details."""

from __future__ import annotations

import math
import uuid

from google.protobuf import struct_pb2
from google.protobuf.message import Message

from genmesh.runtime import errors, media
from genmesh.runtime.errors import FieldViolation
from genmesh.v1 import common_pb2

KIND_PREFIX = {
    common_pb2.CONTENT_KIND_TEXT: ("text/",),
    common_pb2.CONTENT_KIND_IMAGE: ("image/",),
    common_pb2.CONTENT_KIND_AUDIO: ("audio/",),
    common_pb2.CONTENT_KIND_VIDEO: ("video/",),
    common_pb2.CONTENT_KIND_DOCUMENT: ("application/", "text/"),
    common_pb2.CONTENT_KIND_JSON: ("application/json",),
}
MAX_REQUEST_ID = 128
# Names (bindings, personalities, models) come back in error messages and details, which travel
# in trailing metadata: unbounded ones would overflow its limit and lose the status's details.
MAX_NAME = 256
# RFC 6838 allows 127 characters each for the type and the subtype.
MAX_MIME_TYPE = 255
# Structs go on to engines and the sandbox, each hop wrapping them a level deeper, and protobuf
# decoders stop at 100 levels of messages (about 30 of JSON): deeper ones fail further on.
MAX_JSON_DEPTH = 20


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


def names(**values: str) -> None:
    """Refuses names no binding, personality or model can have, before they are looked up."""
    violations = [
        FieldViolation(field, f"must be printable and at most {MAX_NAME} characters")
        for field, value in values.items()
        if len(value) > MAX_NAME or not value.isprintable()
    ]
    if violations:
        raise errors.invalid_argument("invalid name", *violations)


def task(value: int) -> None:
    """Enums are open on the wire: any number arrives, and only the known ones mean a task."""
    if value not in common_pb2.Task.values():
        known = ", ".join(common_pb2.Task.keys())
        raise errors.invalid_argument(
            f"unknown task {value}", FieldViolation("task", f"must be one of {known}")
        )


def json_violations(field: str, struct: struct_pb2.Struct) -> list[FieldViolation]:
    """Structs carry JSON, which has no NaN or infinity and which every hop must decode."""
    pending: list[tuple[struct_pb2.Value, int]] = [(value, 1) for value in struct.fields.values()]
    while pending:
        value, depth = pending.pop()
        if depth > MAX_JSON_DEPTH:
            return [FieldViolation(field, f"is nested more than {MAX_JSON_DEPTH} levels deep")]
        kind = value.WhichOneof("kind")
        if kind == "number_value" and not math.isfinite(value.number_value):
            return [FieldViolation(field, "holds a number JSON cannot carry (NaN or infinity)")]
        if kind == "struct_value":
            pending.extend((v, depth + 1) for v in value.struct_value.fields.values())
        elif kind == "list_value":
            pending.extend((v, depth + 1) for v in value.list_value.values)
    return []


def _item_violations(index: int, item: common_pb2.InputItem) -> list[FieldViolation]:
    where = f"inputs[{index}]"
    payload = item.WhichOneof("payload")
    if len(item.mime_type) > MAX_MIME_TYPE or not (
        item.mime_type.isascii() and item.mime_type.isprintable()
    ):
        return [FieldViolation(f"{where}.mime_type", "must be a media type such as image/png")]
    mime = item.mime_type.split(";")[0].strip().lower()
    if payload is None and not (
        item.tool_calls and item.role == common_pb2.INPUT_ROLE_ASSISTANT_REPLY
    ):
        return [FieldViolation(where, "needs a payload: text, data or uri")]
    if payload == "tokens":
        if item.kind not in (common_pb2.CONTENT_KIND_UNSPECIFIED, common_pb2.CONTENT_KIND_TEXT):
            return [FieldViolation(f"{where}.kind", "token ids are text")]
        if not item.tokens.ids:
            return [FieldViolation(f"{where}.tokens", "is empty")]
        return []
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
        valid = media.matches(mime, item.data)
        if valid is None:
            return [FieldViolation(f"{where}.mime_type", f"unsupported media type '{mime}'")]
        if not valid:
            return [FieldViolation(f"{where}.data", f"is not valid {mime} data")]
    if payload == "text" and item.kind not in (
        common_pb2.CONTENT_KIND_UNSPECIFIED,
        common_pb2.CONTENT_KIND_TEXT,
        common_pb2.CONTENT_KIND_DOCUMENT,
        common_pb2.CONTENT_KIND_JSON,
    ):
        return [FieldViolation(f"{where}.text", "a text payload needs a text kind")]
    return []


def check_size(request: Message, max_bytes: int, field: str) -> None:
    """A request larger than the router takes, with `field` named as what to make smaller."""
    size = request.ByteSize()
    if size > max_bytes:
        raise errors.invalid_argument(
            "request too large",
            FieldViolation(field, f"request is {size} bytes; the limit is {max_bytes}"),
            reason="REQUEST_TOO_LARGE",
        )


def check_request(
    request: common_pb2.GenerateRequest, max_bytes: int, needs_inputs: bool = True
) -> None:
    """Raises INVALID_ARGUMENT listing every problem found."""
    check_size(request, max_bytes, "inputs")
    violations: list[FieldViolation] = []
    if needs_inputs and not request.inputs:
        violations.append(FieldViolation("inputs", "at least one input is required"))
    for index, item in enumerate(request.inputs):
        violations.extend(_item_violations(index, item))
        text = request.task in (common_pb2.TASK_UNSPECIFIED, common_pb2.TASK_TEXT)
        if item.HasField("tokens") and not (text and request.text.raw_prompt):
            violations.append(
                FieldViolation(f"inputs[{index}].tokens", "need TASK_TEXT and text.raw_prompt")
            )
    violations.extend(json_violations("extra", request.extra))
    if request.text.constraint.HasField("json_schema"):
        schema = request.text.constraint.json_schema
        violations.extend(json_violations("text.constraint.json_schema", schema))
    for index, tool in enumerate(request.text.tools):
        violations.extend(json_violations(f"text.tools[{index}].parameters", tool.parameters))
    if violations:
        raise errors.invalid_argument("invalid request", *violations)
