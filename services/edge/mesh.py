"""The edge's connection to the router: one channel for every HTTP request, each call carrying
its caller's key and request id, and cancelled when the HTTP client goes away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.requests import Request

from genmesh.client import error_details
from genmesh.runtime.channel import connect
from genmesh.v1 import (
    catalog_pb2_grpc,
    common_pb2,
    embedding_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
)

T = TypeVar("T")
DEADLINE_SHARE = 0.9
Indexed = tuple[int, common_pb2.StreamEvent]


@dataclass(frozen=True)
class Caller:
    """Who sent an HTTP request: the key is forwarded, never checked here (the router does)."""

    key: str | None
    request_id: str
    # Seconds the client waits for a whole answer (the SDKs' read timeout, which for a stream
    # bounds each read, not the stream); the router gets a deadline a little shorter, so that
    # the generation stops (and says why) while the client still listens.
    timeout: float | None = None

    @property
    def deadline(self) -> float | None:
        return self.timeout * DEADLINE_SHARE if self.timeout else None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-api-key", self.key),) if self.key else ()


class Batch:
    """The router calls of one HTTP request (a list of prompts). A call refused because its
    binding's queue is full while another call of the batch runs waits for that one to end and
    is made again, so a batch larger than the binding's queue is served in waves instead of
    being refused because of itself; refused with none of the batch running, it fails (429)."""

    def __init__(self) -> None:
        self.running = 0
        self._ended = asyncio.Event()

    def start(self) -> None:
        self.running += 1

    def end(self, admitted: bool) -> None:
        self.running -= 1
        if admitted:
            self._ended.set()
            self._ended = asyncio.Event()

    async def retry_after(self, error: grpc.aio.AioRpcError) -> None:
        """Returns when a call of the batch has ended, if `error` is a full queue and one runs;
        else raises `error`."""
        if self.running == 0 or not queue_full(error):
            raise error
        await self._ended.wait()


def queue_full(error: grpc.aio.AioRpcError) -> bool:
    return error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and (
        error_details(error).reason == "QUEUE_FULL"
    )


class Mesh:
    """The router's public services over one channel shared by every request."""

    def __init__(self, address: str, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self.channel = connect(address, None, max_message_bytes)
        self.generation: generation_pb2_grpc.GenerationServiceAsyncStub = (
            generation_pb2_grpc.GenerationServiceStub(self.channel)
        )
        self.catalog: catalog_pb2_grpc.CatalogServiceAsyncStub = (
            catalog_pb2_grpc.CatalogServiceStub(self.channel)
        )
        self.embedding: embedding_pb2_grpc.EmbeddingServiceAsyncStub = (
            embedding_pb2_grpc.EmbeddingServiceStub(self.channel)
        )
        self.health = health_pb2_grpc.HealthStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def serving(self) -> bool:
        request = health_pb2.HealthCheckRequest()
        try:
            answer = await self.health.Check(request, timeout=2)
        except Exception:
            return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    async def generate_all(
        self, requests: Sequence[common_pb2.GenerateRequest], caller: Caller
    ) -> list[common_pb2.GenerateResponse]:
        """Every request at once (in waves if their binding's queue is shorter); the first
        failure cancels the others."""
        batch = Batch()
        tasks = [asyncio.ensure_future(self.generate(r, caller, batch)) for r in requests]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()

    async def generate(
        self, request: common_pb2.GenerateRequest, caller: Caller, batch: Batch
    ) -> common_pb2.GenerateResponse:
        while True:
            batch.start()
            admitted = False
            try:
                response = await self.generation.Generate(
                    request, metadata=caller.metadata, timeout=caller.deadline
                )
                admitted = True
                return response
            except grpc.aio.AioRpcError as error:
                refused = error
            finally:
                batch.end(admitted)
            await batch.retry_after(refused)

    async def stream(
        self, request: common_pb2.GenerateRequest, caller: Caller, batch: Batch | None = None
    ) -> AsyncGenerator[common_pb2.StreamEvent, None]:
        """No deadline: a stream lasts as long as its client keeps reading."""
        batch = batch or Batch()
        while True:
            call = self.generation.GenerateStream(
                generation_pb2.GenerateStreamRequest(request=request), metadata=caller.metadata
            )
            batch.start()
            admitted = False
            try:
                async for response in call:
                    admitted = True
                    yield response.event
                admitted = True
                return
            except grpc.aio.AioRpcError as error:
                if admitted:
                    raise
                refused = error
            finally:
                call.cancel()
                batch.end(admitted)
            await batch.retry_after(refused)

    async def open_streams(
        self, requests: Sequence[common_pb2.GenerateRequest], caller: Caller
    ) -> AsyncGenerator[Indexed, None]:
        """The requests' events as (request index, event), merged as they come: a choice whose
        generation waits in a queue holds back none of the others."""
        batch = Batch()
        merged = merge([self.stream(r, caller, batch) for r in requests])
        async with aclosing(merged):
            async for item in merged:
                yield item


class _End:
    """A merged stream's end, with the error that ended it, if any."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error


async def merge(
    streams: Sequence[AsyncGenerator[T, None]],
) -> AsyncGenerator[tuple[int, T], None]:
    """Items of several streams as they arrive, with the index of their stream; closing the merge
    (or one stream failing) closes every stream."""
    if len(streams) == 1:
        async with aclosing(streams[0]) as only:
            async for item in only:
                yield 0, item
        return
    queue: asyncio.Queue[tuple[int, T] | _End] = asyncio.Queue()

    async def pump(index: int, stream: AsyncGenerator[T, None]) -> None:
        try:
            async with aclosing(stream):
                async for item in stream:
                    await queue.put((index, item))
        except Exception as error:
            await queue.put(_End(error))
        else:
            await queue.put(_End())

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        open_streams = len(tasks)
        while open_streams:
            message = await queue.get()
            if not isinstance(message, _End):
                yield message
            elif message.error is not None:
                raise message.error
            else:
                open_streams -= 1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Prefetched(Generic[T]):
    """An async iterator whose first item is already being fetched; `aclose` stops both the
    fetch and the rest, whether or not iteration began."""

    def __init__(self, first: asyncio.Future[T], rest: AsyncGenerator[T, None]) -> None:
        self._first: asyncio.Future[T] | None = first
        self._rest = rest

    def __aiter__(self) -> Prefetched[T]:
        return self

    async def __anext__(self) -> T:
        first, self._first = self._first, None
        if first is not None:
            return await first
        return await anext(self._rest)

    async def aclose(self) -> None:
        first, self._first = self._first, None
        if first is not None:
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
        await self._rest.aclose()


async def prefetch(request: Request, items: AsyncGenerator[T, None], grace: float) -> Prefetched[T]:
    """`items`, whose first item is awaited here up to `grace` seconds: a failure by then is
    raised here (so it can still be an HTTP status), a client leaving meanwhile closes `items`;
    a slower first item is left to the consumer."""
    first = asyncio.ensure_future(anext(items))
    fetched = Prefetched(first, items)
    try:
        await unless_disconnected(request, asyncio.wait({first}, timeout=grace))
        if first.done():
            first.result()
    except BaseException:
        await fetched.aclose()
        raise
    return fetched


async def until_disconnected(request: Request) -> None:
    """Returns once the HTTP client has gone (its request body must have been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class ClientGoneError(Exception):
    """The HTTP client left before its answer was ready."""


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`work`, cancelled (with the gRPC calls it makes) if the client leaves before it is done."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise ClientGoneError
    return task.result()
