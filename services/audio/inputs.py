"""Reading an audio request: which task it asks for, the text to speak, the audio to hear."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass

from genmesh.runtime import errors
from genmesh.runtime.errors import FieldViolation, ServiceError
from genmesh.v1 import common_pb2

TEXT_KINDS = (common_pb2.CONTENT_KIND_UNSPECIFIED, common_pb2.CONTENT_KIND_TEXT)
SPOKEN_ROLES = (common_pb2.INPUT_ROLE_UNSPECIFIED, common_pb2.INPUT_ROLE_USER_PROMPT)


def invalid(message: str, field: str, description: str = "") -> ServiceError:
    return errors.invalid_argument(message, FieldViolation(field, description or message))


def resolve_task(request: common_pb2.GenerateRequest) -> common_pb2.Task.ValueType:
    """The task asked for; when unset, the parameters or the inputs say which."""
    if request.task in (common_pb2.TASK_SPEECH, common_pb2.TASK_TRANSCRIPTION):
        return request.task
    if request.task == common_pb2.TASK_UNSPECIFIED:
        parameters = request.WhichOneof("parameters")
        if parameters == "speech":
            return common_pb2.TASK_SPEECH
        if parameters == "transcription" or not request.inputs:
            return common_pb2.TASK_TRANSCRIPTION
        if any(i.kind == common_pb2.CONTENT_KIND_AUDIO for i in request.inputs):
            return common_pb2.TASK_TRANSCRIPTION
        return common_pb2.TASK_SPEECH
    raise invalid(
        "the audio service serves speech and transcription only",
        "task",
        "must be TASK_SPEECH or TASK_TRANSCRIPTION",
    )


def speech_text(request: common_pb2.GenerateRequest, limit: int) -> str:
    """The text to speak: the user prompt items, in order (system context only conditions LLMs)."""
    parts: list[str] = []
    for index, item in enumerate(request.inputs):
        if item.kind not in TEXT_KINDS or item.WhichOneof("payload") != "text":
            raise invalid("text-to-speech takes text inputs", f"inputs[{index}]", "must be text")
        if item.role in SPOKEN_ROLES:
            parts.append(item.text)
    text = "\n\n".join(parts)
    if len(text) > limit:
        raise invalid("the text is too long", "inputs", f"at most {limit} characters")
    return text


@dataclass(frozen=True)
class AudioInput:
    field: str
    data: bytes
    mime_type: str


def audio_input(request: common_pb2.GenerateRequest) -> AudioInput | None:
    """The one audio item of a whole-file transcription, or None for streamed audio."""
    found = [
        (i, item)
        for i, item in enumerate(request.inputs)
        if item.kind == common_pb2.CONTENT_KIND_AUDIO
        or item.role == common_pb2.INPUT_ROLE_INPUT_AUDIO
    ]
    if not found:
        return None
    if len(found) > 1:
        raise invalid("one audio input at a time", "inputs", "holds more than one audio item")
    index, item = found[0]
    field = f"inputs[{index}]"
    payload = item.WhichOneof("payload")
    if payload == "uri" and item.uri.startswith("data:"):
        try:
            with urllib.request.urlopen(item.uri) as uri:
                return AudioInput(f"{field}.uri", uri.read(), uri.headers["Content-Type"] or "")
        except ValueError as exc:
            raise invalid("malformed data: URI", f"{field}.uri", str(exc)) from None
    if payload != "data":
        raise invalid("audio must be inline", f"{field}", "needs data bytes or a data: URI")
    if not item.mime_type:
        raise invalid("the audio's media type is missing", f"{field}.mime_type", "required")
    return AudioInput(f"{field}.data", item.data, item.mime_type)
