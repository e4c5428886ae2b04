"""Client channels between services: auth metadata, tracing, message limits, keepalive."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from genmesh.runtime import telemetry


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
    return [_UnaryUnaryKey(key), _UnaryStreamKey(key), _StreamUnaryKey(key), _StreamStreamKey(key)]


def channel_options(max_message_bytes: int) -> Sequence[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def connect(
    address: str, api_key: str | None, max_message_bytes: int = 64 * 1024 * 1024
) -> grpc.aio.Channel:
    """An insecure channel to another mesh service (TLS terminates at the mesh's edge)."""
    interceptors: list[grpc.aio.ClientInterceptor] = telemetry.client_interceptors()
    if api_key:
        interceptors.extend(key_interceptors(api_key))
    return grpc.aio.insecure_channel(
        address, options=channel_options(max_message_bytes), interceptors=interceptors
    )
