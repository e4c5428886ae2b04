"""`/api/...`: the playground's JSON routes, for what OpenAI's API has no words for (bindings
and personalities, image steps and previews, transcript segments, tokens, agent programs, the
mesh's status).

Each route is a thin adapter: its body is the gRPC request in protobuf's JSON mapping (field
names as in the protos) and its answer the gRPC response in the same mapping, so the page speaks
the mesh's own contract. A failed call answers `{"error": {"status", "code", "message", ...}}`
with the gRPC status name and its google.rpc details, never an empty body.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncGenerator, Awaitable, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import grpc
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from google.protobuf import json_format
from google.protobuf.message import Message
from prometheus_client.parser import text_string_to_metric_families

from genmesh.client import error_details
from genmesh.edge import errors
from genmesh.edge.mesh import Caller, Mesh, prefetch, unless_disconnected
from genmesh.edge.openai.common import CallerDep, MeshDep, SettingsDep
from genmesh.edge.sse import EventStream, frame
from genmesh.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    catalog_pb2,
    common_pb2,
    tokenizer_pb2,
    tokenizer_pb2_grpc,
)

router = APIRouter(prefix="/api")
M = TypeVar("M", bound=Message)
# How long a stream's first event may take to arrive as an HTTP error rather than an SSE one.
FIRST_EVENT_GRACE = 0.5
# Seconds a status scrape of a service's /metrics may take.
SCRAPE_TIMEOUT = 2.0
QUEUE_METRIC = "genmesh_queue_depth"
REQUESTS_METRIC = "gen_ai_server_request_duration_seconds"


class MeshError(Exception):
    """A failed router call, answered as JSON the page shows as it is."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        super().__init__(error.details())
        self.error = error

    def body(self) -> dict[str, Any]:
        details = error_details(self.error)
        http = errors.from_rpc(self.error)
        return {
            "error": {
                "status": http.status,
                "code": details.code.name,
                "message": details.message or details.code.name,
                "reason": details.reason,
                "violations": details.violations,
                "metadata": details.metadata,
                "retry_after": details.retry_after,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.body()["error"]["status"])


@contextmanager
def mesh_errors() -> Iterator[None]:
    try:
        yield
    except grpc.aio.AioRpcError as error:
        raise MeshError(error) from None


def to_json(message: Message) -> dict[str, Any]:
    found: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return found


async def parsed(request: Request, message: type[M]) -> M:
    """The body as `message` in protobuf's JSON mapping; a body that is not one is a 400."""
    try:
        return json_format.Parse(await request.body() or b"{}", message())
    except json_format.ParseError as exc:
        raise errors.OpenAIError(400, f"the body is not a {message.__name__}: {exc}") from None


async def call(http: Request, work: Awaitable[Message]) -> dict[str, Any]:
    """One router call's answer as JSON, cancelled with the call if the client leaves."""
    with mesh_errors():
        answer = await unless_disconnected(http, work)
    return to_json(answer)


def install(app: FastAPI) -> None:
    async def mesh_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, MeshError)
        return exc.response()

    app.add_exception_handler(MeshError, mesh_error)
    app.state.rates = Rates()
    app.include_router(router)


@router.get("/catalog")
async def catalog(http: Request, mesh: MeshDep, caller: CallerDep) -> dict[str, Any]:
    """Bindings, personalities, server functions and every binding's models, in one answer."""
    meta = caller.metadata
    with mesh_errors():
        bindings, personalities, functions = await unless_disconnected(
            http,
            asyncio.gather(
                mesh.catalog.ListBindings(catalog_pb2.ListBindingsRequest(), metadata=meta),
                mesh.catalog.ListPersonalities(
                    catalog_pb2.ListPersonalitiesRequest(), metadata=meta
                ),
                mesh.catalog.ListFunctions(catalog_pb2.ListFunctionsRequest(), metadata=meta),
            ),
        )
    return {
        "bindings": [to_json(b) for b in bindings.bindings],
        "personalities": [to_json(p) for p in personalities.personalities],
        "functions": [to_json(f) for f in functions.functions],
        "models": await models(mesh, caller, [b.name for b in bindings.bindings]),
    }


async def models(mesh: Mesh, caller: Caller, bindings: list[str]) -> list[dict[str, Any]]:
    """Each binding's models; a binding whose service is down is left out, not an error."""
    answers = await asyncio.gather(
        *(
            mesh.catalog.ListModels(
                catalog_pb2.ListModelsRequest(binding=name), metadata=caller.metadata
            )
            for name in bindings
        ),
        return_exceptions=True,
    )
    listed: list[dict[str, Any]] = []
    for answer in answers:
        if isinstance(answer, catalog_pb2.ListModelsResponse):
            listed.extend(to_json(m) for m in answer.models)
        elif not isinstance(answer, grpc.aio.AioRpcError):
            raise answer
    return listed


async def generate_request(http: Request, caller: Caller) -> common_pb2.GenerateRequest:
    """The body's request, under the HTTP request's id unless it names its own."""
    request = await parsed(http, common_pb2.GenerateRequest)
    request.request_id = request.request_id or caller.request_id
    return request


@router.post("/generate")
async def generate(http: Request, mesh: MeshDep, caller: CallerDep) -> dict[str, Any]:
    request = await generate_request(http, caller)
    return await call(
        http, mesh.generation.Generate(request, metadata=caller.metadata, timeout=caller.deadline)
    )


@router.post("/generate:stream")
async def generate_stream(http: Request, mesh: MeshDep, caller: CallerDep) -> EventStream:
    """SSE `data:` lines, each a StreamEvent; an error after the first event is an `error`
    event with the same body as an error answer. Leaving cancels the generation."""
    request = await generate_request(http, caller)
    with mesh_errors():
        events = await prefetch(http, mesh.stream(request, caller), FIRST_EVENT_GRACE)

    async def frames() -> AsyncGenerator[bytes, None]:
        try:
            async with aclosing(events):
                async for event in events:
                    yield frame(json.dumps(to_json(event)))
        except grpc.aio.AioRpcError as error:
            yield frame(json.dumps(MeshError(error).body()), "error")

    return EventStream(frames(), events.aclose)


@router.post("/tokenize")
async def tokenize(http: Request, mesh: MeshDep, caller: CallerDep) -> dict[str, Any]:
    request = await parsed(http, tokenizer_pb2.TokenizeRequest)
    stub = tokenizer_pb2_grpc.TokenizerServiceStub(mesh.channel)
    return await call(http, stub.Tokenize(request, metadata=caller.metadata))


@router.post("/agent:execute")
async def execute(http: Request, mesh: MeshDep, caller: CallerDep) -> dict[str, Any]:
    """A program run with the mesh's functions; the answer's call log has each call's start and
    duration, from which the page draws the parallel waves."""
    request = await parsed(http, agent_pb2.ExecuteRequest)
    stub = agent_pb2_grpc.AgentServiceStub(mesh.channel)
    return await call(http, stub.Execute(request, metadata=caller.metadata))


@dataclass
class Sample:
    """A service's request count at a moment, for the rate between two status reads."""

    at: float
    requests: float


@dataclass
class Rates:
    last: dict[str, Sample] = field(default_factory=dict)

    def rate(self, service: str, requests: float) -> float | None:
        now = time.monotonic()
        previous = self.last.get(service)
        self.last[service] = Sample(now, requests)
        if previous is None or now <= previous.at or requests < previous.requests:
            return None
        return (requests - previous.requests) / (now - previous.at)


async def rates(request: Request) -> Rates:
    found: Rates = request.app.state.rates
    return found


def scrape(url: str) -> tuple[dict[str, float], float]:
    """A /metrics page's queue depths by queue and its count of finished requests."""
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as page:
        text = page.read().decode()
    queues: dict[str, float] = {}
    requests = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == QUEUE_METRIC:
                queues[sample.labels.get("queue", "")] = sample.value
            elif sample.name == f"{REQUESTS_METRIC}_count":
                requests += sample.value
    return queues, requests


@router.get("/status")
async def status(
    mesh: MeshDep,
    caller: CallerDep,
    settings: SettingsDep,
    known: Annotated[Rates, Depends(rates)],
) -> dict[str, Any]:
    """The router's health, each binding's replicas, the loaded models, and for each service
    whose /metrics the edge is told of (`status_sources`), its queue depths and request rate."""
    with mesh_errors():
        listed = await mesh.catalog.ListBindings(
            catalog_pb2.ListBindingsRequest(), metadata=caller.metadata
        )
    names = list(settings.status_sources)
    scraped = await asyncio.gather(
        *(asyncio.to_thread(scrape, settings.status_sources[n]) for n in names),
        return_exceptions=True,
    )
    services: list[dict[str, Any]] = []
    for name, result in zip(names, scraped, strict=True):
        if isinstance(result, BaseException):
            services.append({"name": name, "up": False, "error": str(result)})
            continue
        queues, requests = result
        rate = known.rate(name, requests)
        services.append(
            {"name": name, "up": True, "queues": queues, "requests": requests, "rate": rate}
        )
    return {
        "router": {"serving": await mesh.serving()},
        "bindings": [to_json(b) for b in listed.bindings],
        "models": await models(mesh, caller, [b.name for b in listed.bindings]),
        "services": services,
    }
