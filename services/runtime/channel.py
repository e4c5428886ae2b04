"""Client channels between services: auth metadata, tracing, message limits, keepalive."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import grpc

from genmesh.runtime import errors, telemetry


class _WithKey:
    """Adds the API key to a call's metadata."""

    def __init__(self, key: str) -> None:
        self._key = key

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata["x-api-key"] = self._key
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# grpc.aio files each interceptor under one call kind only, so each kind needs its own class.
class _UnaryUnaryKey(_WithKey, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStreamKey(_WithKey, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnaryKey(_WithKey, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _StreamStreamKey(_WithKey, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def key_interceptors(key: str) -> list[grpc.aio.ClientInterceptor]:
    """For clients outside the mesh; mesh channels (`connect`) add the key without interceptors."""
    return [_UnaryUnaryKey(key), _UnaryStreamKey(key), _StreamUnaryKey(key), _StreamStreamKey(key)]


Metadata = grpc.aio.Metadata | Sequence[tuple[str, str | bytes]] | None


class _Stamped:
    """A multicallable that adds the key and the W3C trace context to each call's metadata.

    grpc.aio routes every message of an intercepted call through an extra task and queue, which
    roughly halved the router's streaming relay rate; stamping metadata here keeps calls on
    grpc's direct path.
    """

    def __init__(self, inner: Any, key: str | None, writes: bool = False) -> None:
        self._inner = inner
        self._key = key
        self._writes = writes

    def __call__(self, *args: Any, metadata: Metadata = None, **kwargs: Any) -> Any:
        stamped = list(metadata or ())
        if self._key:
            stamped.append(("x-api-key", self._key))
        stamped.extend(telemetry.trace_headers(stamped))
        call = self._inner(*args, metadata=stamped, **kwargs)
        if self._writes:
            call.add_done_callback(_remember_status)
        return call


class MeshChannel(grpc.aio.Channel):
    """A channel to another mesh service whose calls carry the key and the trace context."""

    def __init__(self, channel: grpc.aio.Channel, key: str | None) -> None:
        self._channel = channel
        self._key = key

    async def __aenter__(self) -> MeshChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Stamped(self._channel.unary_unary(method, *args, **kwargs), self._key)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Stamped(self._channel.unary_stream(method, *args, **kwargs), self._key)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Stamped(self._channel.stream_unary(method, *args, **kwargs), self._key, True)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Stamped(self._channel.stream_stream(method, *args, **kwargs), self._key, True)


KEEPALIVE_MS = 10_000


def channel_options(max_message_bytes: int) -> Sequence[tuple[str, Any]]:
    """Options for both ends. Keepalive pings every 10 s, even between calls, so a peer that hangs
    with its connection open (a stopped process, a dead node) is noticed within 15 s; servers
    accept pings that often."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_MS // 2),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_MS // 2),
    ]


def connect(
    address: str, api_key: str | None, max_message_bytes: int = 64 * 1024 * 1024
) -> grpc.aio.Channel:
    """An insecure channel to another mesh service (TLS terminates at the mesh's edge).

    Round-robin spreads calls over every address a name resolves to, so one address naming a
    headless Kubernetes Service balances across its pods.
    """
    options = [*channel_options(max_message_bytes), ("grpc.lb_policy_name", "round_robin")]
    channel = grpc.aio.insecure_channel(address, options=options)
    return MeshChannel(channel, api_key)


# What grpcio's asyncio client makes a call's status when a write of ours fails because the peer
# has just ended the call: it replaces the peer's status, details and all (grpc/grpc#36066).
LOCAL_WRITE_FAILURE = "Internal error from Core"
# When the write fails before the peer's status is in, that status replaces ours in turn.
PEER_STATUS_WAIT_S = 1.0
T = TypeVar("T")
# The status each call of a mesh channel that we write to ended with first: the peer's, kept
# before a failed write can replace it.
_first_status: weakref.WeakKeyDictionary[grpc.aio.Call, grpc.aio.AioRpcError] = (
    weakref.WeakKeyDictionary()
)


def _now(coroutine: Coroutine[Any, Any, T]) -> T | None:
    """The value of a coroutine that returns without waiting (an ended call's status), or None
    should it wait after all."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    return None


def _remember_status(call: grpc.aio.Call) -> None:
    """A done callback: grpc.aio runs it as the first status is set, the only moment that status
    can still be read once a failed write replaces it."""
    if call in _first_status:
        return
    code, details = _now(call.code()), _now(call.details())
    initial, trailing = _now(call.initial_metadata()), _now(call.trailing_metadata())
    if code is None or initial is None or trailing is None:
        return
    _first_status[call] = grpc.aio.AioRpcError(code, initial, trailing, details)


def _local(code: grpc.StatusCode, details: str | None) -> bool:
    return code == grpc.StatusCode.INTERNAL and details == LOCAL_WRITE_FAILURE


async def stream_end(
    call: grpc.aio.Call, error: BaseException, refused: list[errors.ServiceError]
) -> grpc.aio.AioRpcError | None:
    """What ended a stream we relay a client's messages into: a client message we refused
    (raised), our own cancellation (raised again), or the peer's error (`peer_error`)."""
    if refused:
        raise refused[0] from None
    if not isinstance(error, grpc.aio.AioRpcError):
        raise error
    return await peer_error(call, error)


async def peer_error(
    call: grpc.aio.Call, error: grpc.aio.AioRpcError
) -> grpc.aio.AioRpcError | None:
    """The error the peer ended `call` with, for a call of a mesh channel; None when the peer
    ended it well (OK) and only a late write of ours failed. A stream that the peer refuses while
    we still write to it (a bad config, then audio) must tell our own client the peer's
    INVALID_ARGUMENT and its details, not grpc's INTERNAL."""
    if not _local(error.code(), error.details()):
        return error
    first = _first_status.get(call)
    if first is not None and first.code() == grpc.StatusCode.OK:
        return None
    if first is not None and not _local(first.code(), first.details()):
        return first
    deadline = time.monotonic() + PEER_STATUS_WAIT_S
    while time.monotonic() < deadline:
        await asyncio.sleep(0.001)
        code, details = await call.code(), await call.details()
        if code == grpc.StatusCode.OK:
            return None
        if not _local(code, details):
            trailing = await call.trailing_metadata()
            return grpc.aio.AioRpcError(code, await call.initial_metadata(), trailing, details)
    return error
