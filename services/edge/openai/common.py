"""What every OpenAI route needs: the mesh and the caller of a request, model names as bindings,
parameters genmesh does not serve yet, and SSE responses."""

from __future__ import annotations

import json
import mimetypes
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import FormData, UploadFile

from genmesh.edge import errors
from genmesh.edge.mesh import Caller, Mesh, Prefetched, unless_disconnected
from genmesh.edge.settings import EdgeSettings
from genmesh.edge.sse import EventStream, frame
from genmesh.runtime import media
from genmesh.v1 import common_pb2

REQUEST_ID = "x-request-id"
# The longest request id the router takes.
MAX_REQUEST_ID = 128
# The bounds of the protobuf integer fields requests fill.
INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# The wire's ranges for request fields, so an out-of-range value is a 400 naming the field rather
# than an error from protobuf.
Count = Annotated[int, Field(ge=1, le=INT32_MAX)]
Natural = Annotated[int, Field(ge=0, le=INT32_MAX)]
Seed = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]


class OpenAIRequest(BaseModel):
    """A request body: parameters OpenAI has and genmesh does not know are ignored, as OpenAI's
    other servers do, so clients that send them keep working."""

    model_config = ConfigDict(extra="ignore")


# Dependencies are coroutines: FastAPI runs a plain function's in a worker thread, three thread
# hops a request for what only reads the request.
async def mesh(request: Request) -> Mesh:
    found: Mesh = request.app.state.mesh
    return found


async def settings(request: Request) -> EdgeSettings:
    found: EdgeSettings = request.app.state.settings
    return found


# The official OpenAI SDKs send their read timeout (seconds) in this header.
CLIENT_TIMEOUT = "x-stainless-read-timeout"
# Longer timeouts mean no deadline (gRPC's deadline overflows for timeouts of centuries).
MAX_CLIENT_TIMEOUT_S = 7 * 24 * 3600.0
# Longer keys are no one's (genmesh makes keys of tens of characters); one of many KiB fails as
# gRPC metadata with an error that reads like an overload.
MAX_KEY_LENGTH = 1024


async def caller(request: Request) -> Caller:
    """The key from `Authorization: Bearer` (or `x-api-key`), the request id the edge's
    middleware made sure of, and how long the client waits, when it says so. A key that could
    not travel as gRPC metadata (control or non-ASCII characters, or too many) is refused here."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    key = (token.strip() if scheme.lower() == "bearer" else "") or request.headers.get("x-api-key")
    if key and not (key.isascii() and key.isprintable() and len(key) <= MAX_KEY_LENGTH):
        raise errors.OpenAIError(
            401, "the API key is not valid", "authentication_error", code="invalid_api_key"
        )
    try:
        timeout = float(request.headers.get(CLIENT_TIMEOUT, ""))
    except ValueError:
        timeout = None
    if timeout is not None and not 0 < timeout <= MAX_CLIENT_TIMEOUT_S:
        timeout = None
    return Caller(key or None, request.headers[REQUEST_ID], timeout)


MeshDep = Annotated[Mesh, Depends(mesh)]
CallerDep = Annotated[Caller, Depends(caller)]
SettingsDep = Annotated[EdgeSettings, Depends(settings)]


def routed_id(request_id: str, index: int, count: int) -> str:
    """The id of one of `count` router calls made for a request: the request's own id with the
    call's index, shortened so that it stays within the router's limit."""
    if count == 1:
        return request_id
    suffix = f"-{index}"
    return request_id[: MAX_REQUEST_ID - len(suffix)] + suffix


def fit(requests: Iterable[common_pb2.GenerateRequest], mesh: Mesh, params: errors.Params) -> None:
    """413 for a request larger than a message to the router may be (it would fail on the
    channel with an error that reads like an overload)."""
    for request in requests:
        if request.ByteSize() > mesh.max_message_bytes:
            raise errors.too_large(params.default_input, mesh.max_message_bytes)


def binding_and_model(name: str | None, aliases: Mapping[str, str]) -> tuple[str, str]:
    """`binding`, `binding/model`, or an alias of one (empty: the task's default binding).
    A name with an empty binding (`/`, `/model`) is no model's: 404, not the default."""
    name = name or ""
    binding, _, model = aliases.get(name, name).partition("/")
    if name and name not in aliases and not binding:
        message = f"the model '{name}' does not exist: models are named binding or binding/model"
        raise errors.OpenAIError(404, message, "not_found_error", "model", "model_not_found")
    return binding, model


async def generate(
    http: Request,
    mesh: Mesh,
    caller: Caller,
    request: common_pb2.GenerateRequest,
    params: errors.Params,
) -> common_pb2.GenerateResponse:
    """One generation, cancelled if the client leaves; errors name the client's parameters."""
    fit([request], mesh, params)
    with errors.translated(params):
        [response] = await unless_disconnected(http, mesh.generate_all([request], caller))
    return response


def reject_unsupported(values: Mapping[str, Any]) -> None:
    """400 naming the first parameter that asks for something genmesh does not serve yet."""
    for param, value in values.items():
        if value not in (None, False, 0, "", [], {}):
            raise errors.unsupported(param)


def now() -> int:
    return int(time.time())


def dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


async def _frames(events: AsyncGenerator[str, None]) -> AsyncGenerator[bytes, None]:
    async with aclosing(events):
        async for data in events:
            yield frame(data)


def event_stream(events: AsyncGenerator[str, None], source: Prefetched[Any]) -> EventStream:
    """An SSE response of JSON `data:` lines; a client that leaves closes `events`, and the
    end of the response closes `source` (the gRPC calls behind them) even if none was sent."""
    return EventStream(_frames(events), source.aclose)


M = TypeVar("M", bound=BaseModel)


@asynccontextmanager
async def read_form(request: Request) -> AsyncIterator[FormData]:
    """A multipart body, its temporary files closed on leaving; a body that is not one reads as
    an empty form (its fields are then reported missing)."""
    async with request.form(max_files=8, max_fields=64) as form:
        yield form


def form_fields(form: FormData, model: type[M]) -> M:
    """The form's text fields as `model` (`name[]` fields, as SDKs send arrays, as lists)."""
    fields: dict[str, Any] = {}
    for key, value in form.multi_items():
        if isinstance(value, str):
            name = key.removesuffix("[]")
            if key.endswith("[]"):
                fields.setdefault(name, []).append(value)
            else:
                fields[name] = value
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise errors.validation_error(exc.errors()) from None


@dataclass(frozen=True)
class Upload:
    data: bytes
    # The type the client declared, else the one its bytes or file name show ("" if none).
    mime_type: str


async def upload(
    form: FormData, param: str, max_bytes: int, required: bool = True
) -> Upload | None:
    """The file sent as `param` (or `param[]`)."""
    files = [
        v for k, v in form.multi_items() if k in (param, f"{param}[]") and isinstance(v, UploadFile)
    ]
    if not files:
        if required:
            raise errors.invalid(param, f"{param}: a file is required")
        return None
    if len(files) > 1:
        raise errors.unsupported(param, "takes one file for now")
    file = files[0]
    if file.size is None or file.size > max_bytes:
        raise errors.too_large(param, max_bytes)
    data = await file.read()
    declared = media.canonical(file.content_type or "")
    if declared in ("", "application/octet-stream"):
        # SDKs send bytes without a name as application/octet-stream: the bytes say what they are.
        declared = media.sniff(data) or mimetypes.guess_type(file.filename or "")[0] or ""
    return Upload(data, declared)
