"""Errors in OpenAI's JSON shape, `{"error": {"message", "type", "param", "code"}}`, from gRPC
statuses (with their google.rpc details), from request validation and from the edge itself.

Clients branch on the HTTP status and on `param`/`code`, so a router field such as
`text.max_tokens` or `inputs[2]` is reported as the OpenAI parameter the client sent.

INTERNAL, UNKNOWN and any other status the edge has no meaning for are the upstream's fault: 502,
never 500 (a 500 is the edge's own bug). A message too large for the channel is the client's 413
when it was the request, the upstream's 502 when it was the answer; never 429, which clients
retry. CANCELLED reaches a client that is still listening only when the mesh stopped its work
(a shutdown): 503, which clients retry. 429 and 503 always say when to retry.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from google.protobuf import message
from starlette.exceptions import HTTPException

from genmesh.client import error_details
from genmesh.edge.mesh import ClientGoneError
from genmesh.runtime import values
from genmesh.v1 import common_pb2

log = logging.getLogger(__name__)
Code = grpc.StatusCode

# HTTP status and OpenAI error type of each gRPC status; any other is the upstream's fault (502).
STATUSES: dict[grpc.StatusCode, tuple[int, str]] = {
    Code.INVALID_ARGUMENT: (400, "invalid_request_error"),
    Code.OUT_OF_RANGE: (400, "invalid_request_error"),
    Code.FAILED_PRECONDITION: (400, "invalid_request_error"),
    Code.UNAUTHENTICATED: (401, "authentication_error"),
    Code.PERMISSION_DENIED: (403, "permission_error"),
    Code.NOT_FOUND: (404, "not_found_error"),
    Code.ALREADY_EXISTS: (409, "conflict_error"),
    Code.ABORTED: (409, "conflict_error"),
    Code.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    Code.CANCELLED: (503, "service_unavailable_error"),
    Code.UNIMPLEMENTED: (501, "not_implemented_error"),
    Code.UNAVAILABLE: (503, "service_unavailable_error"),
    Code.DEADLINE_EXCEEDED: (504, "timeout_error"),
}
UPSTREAM = (502, "upstream_error")
# What RESOURCE_EXHAUSTED means when the channel, not a queue, refused a message.
SENT_TOO_LARGE = "Sent message larger than max"
RECEIVED_TOO_LARGE = "Received message larger than max"
# Seconds to wait before retrying a 429 or 503 when the router did not say.
DEFAULT_RETRY_AFTER = 1
UNAVAILABLE_MESSAGE = "the service behind this model is unavailable; retry later"
# The codes OpenAI's clients know, for genmesh's ErrorInfo reasons.
REASONS = {
    "API_KEY_INVALID": "invalid_api_key",
    "BINDING_NOT_FOUND": "model_not_found",
    "MODEL_NOT_FOUND": "model_not_found",
    "PROMPT_TOO_LONG": "context_length_exceeded",
    "QUEUE_FULL": "rate_limit_exceeded",
    "QUEUE_TIMEOUT": "rate_limit_exceeded",
}
# How a generation that ended without a result reads (its partial output is already sent).
UNFINISHED = {
    common_pb2.FINISH_REASON_CANCELLED: Code.CANCELLED,
    common_pb2.FINISH_REASON_DEADLINE: Code.DEADLINE_EXCEEDED,
    common_pb2.FINISH_REASON_ERROR: Code.INTERNAL,
}


@dataclass
class OpenAIError(Exception):
    """An error for the HTTP client, in OpenAI's shape."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def unsupported(param: str, why: str = "is not supported by genmesh yet") -> OpenAIError:
    return OpenAIError(400, f"'{param}' {why}", param=param, code="unsupported_parameter")


def invalid(param: str, message: str) -> OpenAIError:
    return OpenAIError(400, message, param=param, code="invalid_value")


JSON_TYPE = "application/json"
_PREFIX = re.compile(r"^(?:text|image|speech|transcription)\.")
_INPUT = re.compile(r"^inputs(?:\[(\d+)\])?")


@dataclass(frozen=True)
class Params:
    """The OpenAI parameter behind each field of the GenerateRequest an endpoint built: one per
    input item (in order), `inputs` for the rest, and renamed parameter fields."""

    inputs: Sequence[str] = ()
    default_input: str = "messages"
    renames: Mapping[str, str] = field(default_factory=dict)
    # Fields renamed by their shape: (regular expression, replacement), the first match wins.
    patterns: Sequence[tuple[str, str]] = ()

    def of(self, name: str) -> str:
        if name in ("binding", "model", "personality"):
            return "model" if name != "personality" else name
        if name in self.renames:
            return self.renames[name]
        for pattern, replacement in self.patterns:
            renamed, count = re.subn(pattern, replacement, name)
            if count:
                return renamed
        matched = _INPUT.match(name)
        if matched:
            index = matched.group(1)
            if index is not None and int(index) < len(self.inputs):
                return self.inputs[int(index)]
            return self.default_input
        return _PREFIX.sub("", name)


# A chat's parameters as the router names them: the constraint is the response_format, a tool's
# fields are inside its `function`.
TEXT_PARAMS = Params(
    renames={"text.repeat_penalty": "repetition_penalty"},
    patterns=(
        (r"^text\.constraint\b.*$", "response_format"),
        (r"^text\.tools(\[\d+\])\.(\w+)\b.*$", r"tools\1.function.\2"),
        (r"^text\.tool_choice\b.*$", "tool_choice"),
    ),
)
# A legacy completion's: its `logprobs` is the number of alternatives; its prompt is raw, and
# scored when echoed with logprobs.
COMPLETION_PARAMS = Params(
    default_input="prompt",
    renames={
        "text.repeat_penalty": "repetition_penalty",
        "text.top_logprobs": "logprobs",
        "text.raw_prompt": "prompt",
        "text.prompt_logprobs": "echo",
        "tokens": "prompt",
    },
)
# An embedding request's: every input is `input`.
EMBEDDING_PARAMS = Params(
    default_input="input",
    renames={"encoding": "encoding_format", "truncation": "truncation"},
)


def too_large(param: str | None, limit: int) -> OpenAIError:
    return OpenAIError(413, f"the request is larger than {limit} bytes", param=param)


def from_rpc(error: grpc.aio.AioRpcError, params: Params = TEXT_PARAMS) -> OpenAIError:
    """A failed router call as the HTTP client should see it."""
    details = error_details(error)
    if details.reason == "REQUEST_TOO_LARGE" or (
        details.code == Code.RESOURCE_EXHAUSTED and SENT_TOO_LARGE in details.message
    ):
        return OpenAIError(413, "the request is too large for the mesh", code="request_too_large")
    if details.code == Code.RESOURCE_EXHAUSTED and RECEIVED_TOO_LARGE in details.message:
        status, kind = UPSTREAM
        return OpenAIError(status, "the answer is too large for the edge", kind)
    status, kind = STATUSES.get(details.code, UPSTREAM)
    message = details.message or details.code.name
    param = None
    if details.violations:
        # The router's message is the whole request's ("invalid request"); its first violation
        # says what is wrong, in the client's names.
        field, problem = next(iter(details.violations.items()))
        param = params.of(field)
        message = f"{message}: {param}: {problem}"
    headers = {}
    if status in (429, 503):
        delay = DEFAULT_RETRY_AFTER if details.retry_after is None else details.retry_after
        headers["Retry-After"] = str(max(1, math.ceil(delay)))
    code = REASONS.get(details.reason, details.reason.lower() or None)
    if status == 503:
        message = UNAVAILABLE_MESSAGE
    return OpenAIError(status, message, kind, param, code, headers)


@contextmanager
def out_of_range(param: str | None = None) -> Iterator[None]:
    """A value protobuf refuses while a request is built (a bound the request model missed, a
    string with a lone surrogate, which JSON can carry and UTF-8 cannot, a JSON value nested
    too deep for a message) is the client's 400, not the edge's 500."""
    try:
        yield
    except values.InvalidValueError as exc:
        raise OpenAIError(400, str(exc), param=param) from None
    except (ValueError, TypeError, OverflowError, message.Error) as exc:
        where = param or "a parameter"
        raise OpenAIError(400, f"{where} cannot be sent: {exc}", param=param) from None


@contextmanager
def translated(params: Params) -> Iterator[None]:
    """Router errors inside the block, raised as OpenAI errors naming the client's parameters."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        raise from_rpc(error, params) from None


def unfinished(response: common_pb2.GenerateResponse) -> OpenAIError | None:
    """The error a generation that did not finish stands for, if it did not."""
    code = UNFINISHED.get(response.finish_reason)
    if code is None:
        return None
    status, kind = STATUSES.get(code, UPSTREAM)
    reason = common_pb2.FinishReason.Name(response.finish_reason)
    return OpenAIError(status, f"generation ended early: {reason}", kind, code=reason.lower())


# The parts pydantic adds to a location for the union member it tried ("str", "list[str]",
# "tagged-union[A,B]", a model's class name, ...); a tagged union's member is followed by its tag
# value.
_UNION_MEMBER = re.compile(r"^(?:str|int|float|bool|bytes|none|[\w-]+\[.*\]|[A-Z][A-Za-z0-9]*)$")


def _location(loc: Sequence[int | str]) -> str:
    """("body", "messages", 0, "content", "str") -> "messages[0].content"."""
    out = ""
    tag_follows = False
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path") else loc:
        if isinstance(part, str) and _UNION_MEMBER.match(part):
            tag_follows = "tagged-union[" in part
            continue
        if isinstance(part, str) and tag_follows:
            tag_follows = False
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _within(location: str, outer: str) -> bool:
    return location == outer or location.startswith((f"{outer}.", f"{outer}["))


def validation_error(errors: Sequence[Any]) -> OpenAIError:
    """The first problem pydantic found, naming its parameter (none when the body is not JSON).
    A union reports one problem per member; the one deepest inside the parameter says most
    ("stop[1]" rather than "stop" for a list with a number in it)."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    param: str | None = None
    if first.get("type") != "json_invalid":
        param = _location(first.get("loc", ()))
        for other in errors[1:]:
            location = _location(other.get("loc", ()))
            if param and _within(location, param) and len(location) > len(param):
                first, param = other, location
        param = param or None
    message = (
        f"{param}: {first['msg']}"
        if param
        else f"the body must be a JSON object sent as {JSON_TYPE}: {first['msg']}"
    )
    return OpenAIError(400, message, param=param, code="invalid_value")


def install(app: FastAPI) -> None:
    """Every error the app answers takes OpenAI's shape; bad input is a 400, never a 422 or 500."""

    async def openai_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, OpenAIError)
        return exc.response()

    async def rpc_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, grpc.aio.AioRpcError)
        return from_rpc(exc).response()

    async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return validation_error(exc.errors()).response()

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        headers = dict(exc.headers or {})
        return OpenAIError(exc.status_code, str(exc.detail), kind, headers=headers).response()

    async def gone(request: Request, exc: Exception) -> JSONResponse:
        return OpenAIError(499, "the client disconnected", "cancelled").response()

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return OpenAIError(500, "internal error in the edge", "server_error").response()

    app.add_exception_handler(OpenAIError, openai_error)
    app.add_exception_handler(grpc.aio.AioRpcError, rpc_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(ClientGoneError, gone)
    app.add_exception_handler(Exception, unexpected)
