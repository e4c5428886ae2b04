"""Server interceptors that wrap every handler: auth checks and error translation.

grpc.aio interceptors can only swap handlers, so `wrap_handler` rebuilds a handler of the same
streaming kind around a behaviour wrapper.
"""

from __future__ import annotations

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


def wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any], guard: Guard | None, method: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """Runs `guard` before the behaviour and turns ServiceError (or a crash) into a status."""
    request_streaming = bool(handler.request_streaming)

    async def fail(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
        if isinstance(exc, ServiceError):
            await context.abort_with_status(exc.to_status())
        log.exception("unhandled error in %s", method, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")

    if handler.unary_unary or handler.stream_unary:
        inner: Any = handler.unary_unary or handler.stream_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                if guard:
                    await guard(context)
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
            if guard:
                await guard(context)
            responses = inner_stream(_parsed(request, request_streaming), context)
            if inspect.isawaitable(responses):
                await responses  # a handler that writes with context.write()
                return
            async for response in responses:
                yield response
        except (ServiceError, Exception) as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await fail(context, exc)

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
