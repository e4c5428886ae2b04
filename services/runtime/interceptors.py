"""Server interceptors with one job each, over one way of wrapping a handler.

grpc.aio interceptors can only swap handlers. `wrap` rebuilds a handler of any of the four kinds
around an `Around` (a coroutine for calls with one response, an async generator for streamed
ones), and `Interceptor` does it once per method and keeps the result, so a call costs a lookup,
not a rebuild. Anything a job needs from one call (its key, its trace context) it reads from the
call's context, never from the cached handler. Because the outermost one keeps the whole chain,
grpc never reaches the interceptors after it again for that method: every interceptor of a server
must be an `Interceptor` (`genmesh.runtime.server.server_interceptors` refuses any other).

Here: the error interceptor (every error ends as a status with google.rpc details), the call gate
(admission and draining for shutdown) and the message check (a request that does not parse).
Auth and tracing live with their jobs; `server_interceptors` puts them all in order.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import inspect
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

import grpc
from grpc_health.v1.health import SERVICE_NAME as HEALTH_SERVICE

from genmesh.runtime import errors
from genmesh.runtime.errors import ServiceError

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
# Quoted: grpc.RpcMethodHandler is generic only in the type stubs, not at run time.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = Callable[[grpc.HandlerCallDetails], Awaitable["Handler | None"]]
Deserializer = Callable[[bytes], Any]
Unary = Callable[[Any, Context], Awaitable[Any]]
Stream = Callable[[Any, Context], AsyncGenerator[Any, None]]

_HEALTH_PATH = f"/{HEALTH_SERVICE}"


def is_health(method: str) -> bool:
    """Whether `method` (a path, /service/name) is grpc's health service, which needs no key, is
    neither traced nor gated, and reports the shutdown itself: the one test of it."""
    return method.rpartition("/")[0] == _HEALTH_PATH


@dataclass(frozen=True)
class Around:
    """One interceptor's job around one method: `unary(behaviour, request, context)`, a
    coroutine function, for a call with one response; `stream(...)` returning the async generator
    of a streamed call's responses (its own, or the behaviour's when the job is done once at the
    start, which spares every message a step); and optionally the request deserializer to use
    instead of the handler's. Functions, not objects: grpc inspects the outermost unary one to
    tell a coroutine from a threaded handler."""

    unary: Callable[[Unary, Any, Context], Awaitable[Any]]
    stream: Callable[[Stream, Any, Context], AsyncGenerator[Any, None]]
    request_deserializer: Deserializer | None = None


# grpc's constructor of each kind of handler, by (request streaming, response streaming).
_FACTORIES: dict[tuple[bool, bool], Callable[..., Handler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


async def _drive(chain: Stream, request: Any, context: Context) -> None:
    """What grpc runs for a streamed call: the chain's responses, written here rather than
    handed to grpc as a generator. grpc cancels a call blocked in a write outside the generator
    and leaves it suspended, to be closed later by its finalizer on another task: the jobs would
    see a foreign context and end late, without knowing why. Here the chain is closed on the
    call's own task, with GeneratorExit where it stopped."""
    responses = chain(request, context)
    try:
        async for response in responses:
            await context.write(response)
    finally:
        await responses.aclose()


def _chain_of(behaviour: Any) -> Stream:
    """The async generator function under a streaming behaviour: the chain an inner `wrap` drives,
    or the handler's own. grpc also takes coroutines that write with `context.write()` (grpc's
    own health Watch does)."""
    if isinstance(behaviour, functools.partial) and behaviour.func is _drive:
        return behaviour.args[0]  # type: ignore[no-any-return]
    if inspect.isasyncgenfunction(behaviour):
        return behaviour  # type: ignore[no-any-return]

    async def written(request: Any, context: Context) -> AsyncGenerator[Any, None]:
        responses = behaviour(request, context)
        if inspect.isawaitable(responses):
            await responses
            return
        async for response in responses:
            yield response

    return written


def wrap(handler: Handler, around: Around) -> Handler:
    """`handler` with `around` run about its behaviour, of the same kind. The new behaviour is a
    partial of the around itself, so wrapping adds no frame of its own to a call or a message;
    a streamed one is driven by `_drive`, once for the whole chain (an inner one's is dropped)."""
    one_response: Any = handler.unary_unary or handler.stream_unary
    if one_response:
        behaviour: Any = functools.partial(around.unary, one_response)
    else:
        streamed = _chain_of(handler.unary_stream or handler.stream_stream)
        behaviour = functools.partial(_drive, functools.partial(around.stream, streamed))
    factory = _FACTORIES[bool(handler.request_streaming), bool(handler.response_streaming)]
    return factory(
        behaviour,
        request_deserializer=around.request_deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class Interceptor(grpc.aio.ServerInterceptor):
    """An interceptor with one job: `around` says what it is for a method, once per method.
    A job with `skips_health` leaves grpc's health service alone, unasked."""

    skips_health: ClassVar[bool] = False

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    @abc.abstractmethod
    def around(self, method: str, handler: Handler) -> Around | None:
        """The job around `method`'s handler, or None to leave that handler alone."""

    def unknown(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        """What answers a call to a method no service has: None lets grpc answer UNIMPLEMENTED,
        a `refusal` ends it with a status of this job's."""
        return None

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        method: str = handler_call_details.method
        wrapped = self._handlers.get(method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            # An unknown method's answer is never kept: callers choose its name.
            if handler is None:
                return self.unknown(handler_call_details)
            if _refuses(handler):
                return handler
            skipped = self.skips_health and is_health(method)
            around = None if skipped else self.around(method, handler)
            wrapped = handler if around is None else wrap(handler, around)
            self._handlers[method] = wrapped
        return wrapped


async def _refuse(status: grpc.Status, requests: Any, context: Context) -> None:
    await context.abort(status.code, status.details, status.trailing_metadata)


def refusal(status: grpc.Status) -> Handler:
    """A handler ending any call with `status`, its requests unread, for `Interceptor.unknown`;
    the interceptors outside pass it on untouched."""
    return grpc.stream_stream_rpc_method_handler(functools.partial(_refuse, status))


def _refuses(handler: Handler) -> bool:
    behaviour = handler.stream_stream
    return isinstance(behaviour, functools.partial) and behaviour.func is _refuse


class _Malformed:
    """A request message that did not parse. grpc would answer UNKNOWN with the parser's
    exception; `MessageCheck` refuses it with INVALID_ARGUMENT instead."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def refusal(self) -> ServiceError:
        return errors.invalid_argument(
            f"malformed request message: {self.error}",
            errors.FieldViolation("(request)", f"does not parse: {self.error}"),
            reason="MALFORMED_MESSAGE",
        )


def _tolerant(deserializer: Deserializer | None) -> Deserializer | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return _Malformed(exc)

    return deserialize


async def _checked(requests: AsyncIterator[Any]) -> AsyncGenerator[Any, None]:
    async for request in requests:
        if isinstance(request, _Malformed):
            raise request.refusal()
        yield request


def _checked_one(request: Any) -> Any:
    if isinstance(request, _Malformed):
        raise request.refusal()
    return request


def _trailers(context: Context, status: grpc.Status) -> tuple[tuple[str, str | bytes], ...]:
    """The status's trailing metadata (its details) after what the handler set (its
    x-request-id): grpc would keep only the status's."""
    return (*(context.trailing_metadata() or ()), *status.trailing_metadata)


def _end_with(context: Context, status: grpc.Status) -> None:
    """Ends a call with `status` without raising, which a bidi stream needs: aborting one
    whose client is still writing can surface as INTERNAL instead."""
    context.set_code(status.code)
    context.set_details(status.details)
    context.set_trailing_metadata(_trailers(context, status))


class ErrorInterceptor(Interceptor):
    """The one place errors become statuses: a ServiceError with its google.rpc details,
    anything else as an opaque INTERNAL (logged here with its trace, which never leaves the
    process). The handler's trailing metadata is kept."""

    def around(self, method: str, handler: Handler) -> Around:
        def status_of(exc: Exception) -> grpc.Status:
            if isinstance(exc, ServiceError):
                return exc.to_status()
            log.exception("unhandled error in %s", method, exc_info=exc)
            return ServiceError(
                grpc.StatusCode.INTERNAL, f"internal error in {method}", "INTERNAL"
            ).to_status()

        async def unary(behaviour: Unary, request: Any, context: Context) -> Any:
            try:
                return await behaviour(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                status = status_of(exc)
                await context.abort(status.code, status.details, _trailers(context, status))

        async def stream(
            behaviour: Stream, request: Any, context: Context
        ) -> AsyncGenerator[Any, None]:
            try:
                async for response in behaviour(request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                _end_with(context, status_of(exc))

        return Around(unary, stream)


class MessageCheck(Interceptor):
    """Refuses a request message that does not parse with INVALID_ARGUMENT. Innermost, so a
    caller without a valid key learns nothing of what a method takes. The check is made before
    the handler runs (or, for streamed requests, as it reads each), never on a response."""

    def around(self, method: str, handler: Handler) -> Around | None:
        deserializer = _tolerant(handler.request_deserializer)
        if deserializer is None:
            return None
        parsed: Callable[[Any], Any] = _checked if handler.request_streaming else _checked_one

        async def unary(behaviour: Unary, request: Any, context: Context) -> Any:
            return await behaviour(parsed(request), context)

        def stream(behaviour: Stream, request: Any, context: Context) -> AsyncGenerator[Any, None]:
            return behaviour(parsed(request), context)

        return Around(unary, stream, deserializer)


class CallGate(Interceptor):
    """Admits calls: counts those in flight and, once closed for shutdown, refuses new ones with
    UNAVAILABLE while the open ones finish (grpc itself would cancel them without a word).
    Health is left out: it reports the shutdown itself, and its Watch streams never end."""

    skips_health = True

    def __init__(self) -> None:
        super().__init__()
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

    def around(self, method: str, handler: Handler) -> Around | None:
        announce = bool(handler.request_streaming)

        async def unary(behaviour: Unary, request: Any, context: Context) -> Any:
            self.enter()
            try:
                return await behaviour(request, context)
            finally:
                self.leave()

        async def stream(
            behaviour: Stream, request: Any, context: Context
        ) -> AsyncGenerator[Any, None]:
            self.enter()
            try:
                if announce:
                    # Headers go out as soon as a bidi call is admitted, so a client can wait
                    # for them before writing: writing into a call that is being refused can
                    # turn its status into INTERNAL on the client side (grpc.aio does this).
                    await context.send_initial_metadata(())
                async for response in behaviour(request, context):
                    yield response
            finally:
                self.leave()

        return Around(unary, stream)
