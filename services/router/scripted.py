"""Scripted personalities: the workflow program runs in the sandbox service through the
AgentService machinery, with the request available to it as predefined variables.

The program sees `prompt` (the last user prompt), `inputs` (every input item as proto JSON),
`conditioning`, `parameters` (the personality's text parameters under the request's),
`personality`, `binding` and `model`, and calls the mesh's functions (generate_text,
generate_image, ...) and the function registry's. Its `print` lines stream out as Info events;
its value becomes the outputs: a string is a text output, a `{"mime_type", "data": base64}` item
(what generate_image returns) a media output, anything else a JSON output, and a list one output
per element.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc
from google.protobuf import json_format, struct_pb2

from genmesh.router.personalities import Personality
from genmesh.router.source import EventSource
from genmesh.runtime import errors
from genmesh.runtime.timing import duration
from genmesh.runtime.values import py_from_value, value_from_py
from genmesh.v1 import common_pb2, program_pb2, sandbox_pb2

Kind = program_pb2.ProgramError.Kind

# How a failed workflow fails the request. The workflow is the personality's program, not the
# client's, so a program that raised or broke a rule is a broken precondition of the request.
STATUS_OF_KIND = {
    Kind.KIND_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    Kind.KIND_MEMORY: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Kind.KIND_LIMIT: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Kind.KIND_CANCELLED: grpc.StatusCode.CANCELLED,
    Kind.KIND_CRASHED: grpc.StatusCode.UNAVAILABLE,
}

KINDS = {
    "image/": common_pb2.CONTENT_KIND_IMAGE,
    "audio/": common_pb2.CONTENT_KIND_AUDIO,
    "video/": common_pb2.CONTENT_KIND_VIDEO,
    "text/": common_pb2.CONTENT_KIND_TEXT,
}


class ScriptRunner(Protocol):
    def run_server_program(
        self, request_id: str, program: program_pb2.Program
    ) -> AsyncIterator[sandbox_pb2.SandboxServiceExecuteResponse]: ...


def _media(value: dict[str, Any]) -> common_pb2.OutputItem | None:
    mime, data = value.get("mime_type"), value.get("data")
    if set(value) != {"mime_type", "data"} or not isinstance(mime, str):
        return None
    if not isinstance(data, str):
        return None
    try:
        raw = base64.b64decode(data, validate=True)
    except binascii.Error:
        return None
    kind = next(
        (k for prefix, k in KINDS.items() if mime.startswith(prefix)),
        common_pb2.CONTENT_KIND_DOCUMENT,
    )
    return common_pb2.OutputItem(kind=kind, data=raw, mime_type=mime)


def outputs_from(value: Any) -> list[common_pb2.OutputItem]:
    """The program's value as outputs (see the module docstring)."""
    outputs = []
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, str):
            outputs.append(common_pb2.OutputItem(kind=common_pb2.CONTENT_KIND_TEXT, text=item))
            continue
        media = _media(item) if isinstance(item, dict) else None
        outputs.append(
            media
            or common_pb2.OutputItem(
                kind=common_pb2.CONTENT_KIND_JSON,
                mime_type="application/json",
                json=value_from_py(item),
            )
        )
    return outputs


def workflow_failed(personality: str, error: program_pb2.ProgramError) -> errors.ServiceError:
    """A failed workflow, with the status STATUS_OF_KIND gives it, reported with the line and
    the error, never a trace from the sandbox."""
    where = f" at line {error.line}" if error.line else ""
    kind = Kind.Name(error.kind).removeprefix("KIND_").lower()
    detail = f"{error.type}: {error.message}" if error.type else error.message
    return errors.ServiceError(
        STATUS_OF_KIND.get(error.kind, grpc.StatusCode.FAILED_PRECONDITION),
        f"personality '{personality}' workflow failed{where}: {detail}",
        reason="WORKFLOW_FAILED",
        metadata={"personality": personality, "kind": kind, "line": str(error.line)},
    )


def script_globals(personality: Personality, request: common_pb2.GenerateRequest) -> dict[str, Any]:
    """What a workflow program sees: the prompt, every input, the parameters, the names."""
    params = personality.text_parameters()
    params.MergeFrom(request.text)
    prompts = [
        item.text
        for item in request.inputs
        if item.WhichOneof("payload") == "text"
        and item.role in (common_pb2.INPUT_ROLE_USER_PROMPT, common_pb2.INPUT_ROLE_UNSPECIFIED)
    ]
    return {
        "prompt": prompts[-1] if prompts else "",
        "inputs": [
            json_format.MessageToDict(item, preserving_proto_field_name=True)
            for item in request.inputs
        ],
        "conditioning": personality.config.personality_conditioning.strip(),
        "parameters": json_format.MessageToDict(params, preserving_proto_field_name=True),
        "personality": personality.key,
        "binding": request.binding or personality.config.binding,
        "model": request.model or personality.config.model,
    }


class ScriptRun(EventSource):
    """One scripted-personality request."""

    def __init__(
        self,
        personality: Personality,
        request: common_pb2.GenerateRequest,
        runner: ScriptRunner,
        timeout: float | None,
    ) -> None:
        super().__init__(request)
        self.personality = personality
        self.globals = script_globals(personality, request)
        self.runner = runner
        self.timeout = timeout

    def program(self) -> program_pb2.Program:
        values = struct_pb2.Struct()
        values.update(self.globals)
        program = program_pb2.Program(code=self.personality.script, globals=values)
        if self.timeout is not None:
            program.limits.wall_time.CopyFrom(duration(self.timeout))
        return program

    async def __aiter__(self) -> AsyncIterator[common_pb2.StreamEvent]:
        self.clock.dequeued()
        messages = self.runner.run_server_program(self.request.request_id, self.program())
        async for message in messages:
            kind = message.WhichOneof("message")
            if kind == "log":
                self.clock.first_output()
                info = common_pb2.Info(message=message.log.text)
                info.details.update({"personality": self.personality.key, "source": "workflow"})
                yield common_pb2.StreamEvent(info=info)
            elif kind == "result":
                if message.result.HasField("error"):
                    raise workflow_failed(self.personality.key, message.result.error)
                final = common_pb2.GenerateResponse(
                    outputs=outputs_from(py_from_value(message.result.value)),
                    finish_reason=common_pb2.FINISH_REASON_STOP,
                )
                self.finish(final)
                yield common_pb2.StreamEvent(final=final)
                return
        raise errors.unavailable("the sandbox ended the workflow without a result")

    def finish(self, final: common_pb2.GenerateResponse) -> None:
        final.request_id = self.request.request_id
        final.timings.CopyFrom(self.clock.timings())
