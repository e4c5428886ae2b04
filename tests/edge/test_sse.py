"""The edge's SSE responses: pings keep a quiet stream alive, and the calls behind a stream are
closed when it ends, whether or not it made a frame."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from genmesh.edge.server import listen
from genmesh.edge.sse import EventStream, frame


async def served(
    frames: AsyncGenerator[bytes, None], ping: float, closed: asyncio.Event
) -> httpx.Response:
    async def close() -> None:
        closed.set()

    async def route(request: Request) -> EventStream:
        return EventStream(frames, close, ping=ping)

    app = Starlette(routes=[Route("/", route)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://edge") as c:
        return await c.get("/")


async def test_a_quiet_stream_is_kept_alive_with_pings() -> None:
    async def frames() -> AsyncGenerator[bytes, None]:
        await asyncio.sleep(1.0)  # ten pings' time; two suffice, should the machine stall
        yield frame('{"n":1}')
        yield frame("[DONE]")

    closed = asyncio.Event()
    response = await served(frames(), 0.1, closed)
    assert response.headers["content-type"].startswith("text/event-stream")
    head, _, data = response.text.rpartition(": ping\n\n")
    assert head.startswith(": ping\n\n")  # at least two pings while nothing else was sent
    assert data == 'data: {"n":1}\n\ndata: [DONE]\n\n'
    assert closed.is_set()


async def test_a_stream_that_fails_before_its_first_frame_still_closes_its_calls() -> None:
    async def frames() -> AsyncGenerator[bytes, None]:
        raise RuntimeError("the router went away")
        yield b""  # pragma: no cover - makes this a generator

    closed = asyncio.Event()
    with pytest.raises(RuntimeError, match="went away"):
        await served(frames(), 10, closed)
    assert closed.is_set()


def test_an_event_frame_names_its_event() -> None:
    assert frame('{"error":1}', "error") == b'event: error\ndata: {"error":1}\n\n'


async def test_a_client_leaving_a_real_server_closes_the_stream_and_its_calls() -> None:
    """Over uvicorn, as the edge serves: the client reads a frame and hangs up while the next
    is still being made; the frames stop where they were and the calls behind them close."""
    stopped, closed = asyncio.Event(), asyncio.Event()

    async def frames() -> AsyncGenerator[bytes, None]:
        try:
            yield frame('{"n":1}')
            await asyncio.sleep(3600)  # a generation that would run on for nobody
            yield frame('{"n":2}')
        finally:
            stopped.set()

    async def close() -> None:
        closed.set()

    async def route(request: Request) -> EventStream:
        return EventStream(frames(), close)

    app = Starlette(routes=[Route("/", route)])
    listener = listen("127.0.0.1", 0)
    config = uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:  # the socket listens already: a connection waits until uvicorn accepts it
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        async with httpx.AsyncClient() as client, client.stream("GET", url) as response:
            lines = response.aiter_lines()
            assert await anext(lines) == 'data: {"n":1}'
        await asyncio.wait_for(closed.wait(), 5)
        assert stopped.is_set()
    finally:
        server.should_exit = True
        await serving
