"""Server-sent events: frames of `data:` lines, comment pings while nothing is sent, and the
gRPC calls behind a stream closed when its client leaves.

Written here rather than taken from sse-starlette, which spent a task group of four tasks on every
response and a cancel scope with a timeout on every frame: a third of the edge's CPU on a streamed
completion (6.7 ms against 4.3 for 24 tokens), and time to first token."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

# Comment lines keep idle connections (a long prompt, a queue) open through proxies.
PING_SECONDS = 15.0
PING = b": ping\n\n"


def frame(data: str, event: str | None = None) -> bytes:
    """One event; `data` is one line (compact JSON or a marker such as `[DONE]`)."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data}\n\n".encode()


class EventStream(StreamingResponse):
    """An SSE response of `frames`. A client that leaves ends the stream at once: the frames'
    generator is closed, then `close` (which stops the calls behind them, whether or not a frame
    was made)."""

    def __init__(
        self,
        frames: AsyncGenerator[bytes, None],
        close: Callable[[], Awaitable[None]],
        ping: float = PING_SECONDS,
    ) -> None:
        super().__init__(
            frames,
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )
        self._frames = frames
        self._close = close
        self._ping = ping
        self._last_sent = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        streaming = asyncio.current_task()
        assert streaming is not None
        self._last_sent = loop.time()
        watcher = asyncio.create_task(self._watch(receive, send, streaming))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for data in self._frames:
                await send({"type": "http.response.body", "body": data, "more_body": True})
                self._last_sent = loop.time()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            # The client left (the watcher cancelled this task), or the server's grace for open
            # streams ran out: either way the stream is over, and ends quietly once its calls
            # are closed below.
            streaming.uncancel()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            try:
                await self._frames.aclose()
            finally:
                await self._close()

    async def _watch(self, receive: Receive, send: Send, streaming: asyncio.Task[None]) -> None:
        """Pings once the stream has been quiet for the ping interval, and cancels it when the
        client leaves or can no longer be reached. A ping needs no turn with the frames: each
        send writes one whole frame to the transport."""
        loop = asyncio.get_running_loop()
        # A client that can no longer be read from or written to has gone as well.
        with contextlib.suppress(Exception):
            while True:
                quiet_until = self._last_sent + self._ping
                if loop.time() >= quiet_until:
                    await send({"type": "http.response.body", "body": PING, "more_body": True})
                    self._last_sent = loop.time()
                    continue
                try:
                    async with asyncio.timeout_at(quiet_until):
                        message = await receive()
                except TimeoutError:
                    continue
                if message["type"] == "http.disconnect":
                    break
        streaming.cancel()
