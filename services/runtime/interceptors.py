"""Server interceptors that wrap every handler: auth checks and error translation.

grpc.aio interceptors can only swap handlers, so `wrap_handler` rebuilds a handler of the same
streaming kind around a behaviour wrapper.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from genmesh.runtime import errors
from genmesh.runtime.errors import ServiceError

log = logging.getLogger(__name__)

# Quoted: grpc.RpcMethodHandler is generic only in the type stubs, not at run time.
Continuation = Callable[
    [grpc.HandlerCallDetails], Awaitable["grpc.RpcMethodHandler[Any, Any] | None"]
]
Guard = Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]


class _Malformed:
    """A request message that did not parse. grpc would answer UNKNOWN with the parser's
    exception; the handler raises it as INVALID_ARGUMENT instead."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def refusal(self) -> ServiceError:
        return errors.invalid_argument(
            f"malformed request message: {self.error}", reason="MALFORMED_MESSAGE"
        )


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return _Malformed(exc)

    return deserialize


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Malformed):
            raise request.refusal()
        yield request


def _parsed(request: Any, streaming: bool) -> Any:
    if streaming:
        return _checked(request)
    if isinstance(request, _Malformed):
        raise request.refusal()
    return request


class CallGate:
    """Counts the calls in flight and, once closed for shutdown, refuses new ones with
    UNAVAILABLE while the open ones finish (grpc itself would cancel them without a word)."""

    def __init__(self) -> None:
        self.closed = False
        self.active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        if self.closed:
            raise errors.unavailable("the server is shutting down", reason="SHUTTING_DOWN")
        self.active += 1
        self._idle.clear()

    def leave(self) -> None:
        self.active -= 1
        if not self.active:
            self._idle.set()

    async def drain(self, timeout: float) -> None:
        self.closed = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)


def _end_with(context: grpc.aio.ServicerContext[Any, Any], status: grpc.Status) -> None:
    """Ends a call with `status` without raising, which a bidi stream needs: aborting one
    whose client is still writing can surface as INTERNAL instead."""
    context.set_code(status.code)
    context.set_details(status.details)
    context.set_trailing_metadata(status.trailing_metadata)


def wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any],
    guard: Guard | None,
    method: str,
    gate: CallGate | None = None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """Runs `guard` before the behaviour, counts the call at `gate`, and turns ServiceError (or
    a crash) into a status."""
    request_streaming = bool(handler.request_streaming)

    def status_of(exc: BaseException) -> grpc.Status:
        if isinstance(exc, ServiceError):
            return exc.to_status()
        log.exception("unhandled error in %s", method, exc_info=exc)
        return errors.ServiceError(
            grpc.StatusCode.INTERNAL, f"internal error in {method}", "INTERNAL"
        ).to_status()

    async def fail(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
        await context.abort_with_status(status_of(exc))

    @contextlib.asynccontextmanager
    async def admitted(context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
        """Counts the call at the gate (refused once it is closed) and runs the guard."""
        if gate:
            gate.enter()
        try:
            if guard:
                await guard(context)
            yield
        finally:
            if gate:
                gate.leave()

    if handler.unary_unary or handler.stream_unary:
        inner: Any = handler.unary_unary or handler.stream_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                async with admitted(context):
                    return await inner(_parsed(request, request_streaming), context)
            except (ServiceError, Exception) as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                await fail(context, exc)

        factory = (
            grpc.unary_unary_rpc_method_handler
            if handler.unary_unary
            else grpc.stream_unary_rpc_method_handler
        )
        return factory(
            unary,
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    inner_stream: Any = handler.unary_stream or handler.stream_stream

    async def streaming(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            async with admitted(context):
                if request_streaming:
                    # Headers go out as soon as a bidi call is admitted, so a client can wait
                    # for them before writing: writing into a call that is being refused can
                    # turn its status into INTERNAL on the client side (grpc.aio does this).
                    await context.send_initial_metadata(())
                responses = inner_stream(_parsed(request, request_streaming), context)
                if inspect.isawaitable(responses):
                    await responses  # a handler that writes with context.write()
                    return
                async for response in responses:
                    yield response
        except (ServiceError, Exception) as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            _end_with(context, status_of(exc))

    factory_stream = (
        grpc.unary_stream_rpc_method_handler
        if handler.unary_stream
        else grpc.stream_stream_rpc_method_handler
    )
    return factory_stream(
        streaming,
        request_deserializer=_tolerant(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )
