"""Wires the edge: the router connection, the OpenAI routes, errors, request ids, tracing and
body limits, served by uvicorn; `genmesh serve edge` runs `main`."""

from __future__ import annotations

import asyncio
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from opentelemetry import propagate, trace
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from genmesh.edge import api, bridge, errors, openai, playground
from genmesh.edge.mesh import Mesh
from genmesh.edge.openai.common import MAX_REQUEST_ID, REQUEST_ID
from genmesh.edge.settings import EdgeSettings
from genmesh.runtime import telemetry
from genmesh.runtime.server import announce
from genmesh.runtime.settings import load_settings


def usable_request_id(value: str) -> bool:
    """What the router takes as a request id: printable ASCII, not too long."""
    return 0 < len(value) <= MAX_REQUEST_ID and value.isascii() and value.isprintable()


class BodyLimit:
    """Refuses a request body over `limit` bytes with 413: at once when its Content-Length says
    so, else once that many bytes arrived, before any of it is parsed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await errors.too_large(None, self.limit).response()(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                # An HTTPException passes through FastAPI's body parsing as it is.
                raise HTTPException(413, f"the request is larger than {self.limit} bytes")
            return message

        await self.app(scope, counted, send)


class RequestContext:
    """Gives every request an id (the client's `X-Request-Id` when the router can take it, else a
    new one), sent back in every response (500s included: this sits outside the app's error
    middleware), and a span that continues the client's W3C trace, so router calls are its
    children."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.tracer = trace.get_tracer("genmesh")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = headers.get(REQUEST_ID, "")
        if not usable_request_id(request_id):
            request_id = uuid.uuid4().hex
        raw = [(k, v) for k, v in scope["headers"] if k != REQUEST_ID.encode()]
        scope = {**scope, "headers": [*raw, (REQUEST_ID.encode(), request_id.encode())]}

        async def with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                if REQUEST_ID.encode() not in names:
                    message = {
                        **message,
                        "headers": [
                            *message.get("headers", []),
                            (REQUEST_ID.encode(), request_id.encode()),
                        ],
                    }
            await send(message)

        name = f"{scope['method']} {scope['path']}"
        attributes = {"http.request.method": scope["method"], "url.path": scope["path"]}
        with self.tracer.start_as_current_span(
            name,
            context=propagate.extract(headers),
            kind=trace.SpanKind.SERVER,
            attributes=attributes,
        ):
            await self.app(scope, receive, with_id)


def create_app(settings: EdgeSettings, on_ready: Callable[[], None] | None = None) -> ASGIApp:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.mesh = Mesh(settings.router_address, settings.max_message_bytes)
        if on_ready:
            on_ready()
        try:
            yield
        finally:
            await app.state.mesh.close()

    # /docs is the playground's (Swagger UI bundled from npm), not FastAPI's from a CDN.
    app = FastAPI(title="genmesh edge", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    errors.install(app)
    app.include_router(openai.router)
    api.install(app)
    app.include_router(bridge.router)

    @app.get("/health")
    async def health() -> JSONResponse:
        """Ready when the router is: the edge has nothing to serve without it."""
        mesh: Mesh = app.state.mesh
        if await mesh.serving():
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "router unavailable"}, status_code=503)

    playground.install(app, settings)
    return RequestContext(BodyLimit(app, settings.max_body_bytes))


class _Server(uvicorn.Server):
    """uvicorn, but a SIGTERM or SIGINT ends it cleanly (status 0, telemetry flushed) instead of
    being raised again once it has shut down."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


def listen(host: str, port: int) -> socket.socket:
    """The edge's listening socket, whose connections send small writes at once.

    asyncio turns Nagle's algorithm off only on sockets whose proto is TCP, and create_server's
    are proto 0; Linux gives each accepted socket the listener's TCP_NODELAY instead. Without it,
    a stream's chunks after the headers waited ~40 ms for the client's delayed ACK."""
    listener = socket.create_server((host, port))
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return listener


async def main() -> None:
    settings = load_settings(EdgeSettings)
    telemetry.setup(settings.service_name, settings.telemetry)
    listener = listen(settings.host, settings.port)
    port = listener.getsockname()[1]
    announce(settings.service_name, port)
    app = create_app(settings, lambda: announce(settings.service_name, port, ready=True))
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
    )
    try:
        await _Server(config).serve(sockets=[listener])
    finally:
        telemetry.shutdown()
