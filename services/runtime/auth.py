"""API keys: stored as SHA-256 digests, compared in constant time, scoped per service.

Every RPC except grpc.health.v1 needs a key, in `x-api-key` or `authorization: Bearer <key>`; a
call to an unknown method without one is refused like any other, so only a caller with a valid
key can tell which methods exist.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncGenerator, Iterable
from typing import Any

import grpc

from genmesh.runtime import errors
from genmesh.runtime.errors import ServiceError
from genmesh.runtime.interceptors import (
    Around,
    Context,
    Handler,
    Interceptor,
    Stream,
    Unary,
    refusal,
)
from genmesh.runtime.settings import ApiKey, ServiceSettings

ADMIN = "admin"
INTERNAL = "internal"
# The scope each service needs; services not listed need only a valid key.
SERVICE_SCOPES = {
    "genmesh.v1.GenerationService": "generate",
    "genmesh.v1.TokenizerService": "generate",
    "genmesh.v1.EmbeddingService": "generate",
    "genmesh.v1.AgentService": "agent",
    "genmesh.v1.InferenceService": INTERNAL,
    "genmesh.v1.SandboxService": INTERNAL,
}


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def keys_from_settings(settings: ServiceSettings) -> list[ApiKey]:
    """Configured digests plus the plain keys from the environment, hashed here."""
    keys = list(settings.api_keys)
    if settings.api_key is not None:
        keys.append(
            ApiKey(
                name="env",
                sha256=digest(settings.api_key.get_secret_value()),
                scopes=frozenset({"generate", "agent", ADMIN}),
            )
        )
    if settings.internal_key is not None:
        keys.append(
            ApiKey(
                name="internal",
                sha256=digest(settings.internal_key.get_secret_value()),
                scopes=frozenset({INTERNAL, "generate", "agent"}),
            )
        )
    return keys


class KeyStore:
    """The accepted keys; `replace` swaps them atomically when a secrets provider refreshes."""

    def __init__(self, keys: Iterable[ApiKey] = ()) -> None:
        self._keys: tuple[ApiKey, ...] = tuple(keys)

    def replace(self, keys: Iterable[ApiKey]) -> None:
        self._keys = tuple(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def verify(self, presented: str) -> ApiKey | None:
        """Compares against every key so the time taken does not reveal which one matched."""
        candidate = digest(presented).encode()
        found: ApiKey | None = None
        for key in self._keys:
            if hmac.compare_digest(candidate, key.sha256.encode()):
                found = key
        return found


def presented_key(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    for name, value in metadata:
        if isinstance(value, bytes):
            continue
        if name == "x-api-key":
            return value
        if name == "authorization" and value.lower().startswith("bearer "):
            return value[7:].strip()
    return None


class AuthInterceptor(Interceptor):
    """Authenticates every call but health's: a known key, with the scope its service needs.
    Inside the error interceptor (its refusals become statuses) and outside the message check
    (a caller without a key learns nothing of what a method takes)."""

    skips_health = True

    def __init__(self, keys: KeyStore) -> None:
        super().__init__()
        self.keys = keys

    def check(
        self, metadata: Iterable[tuple[str, str | bytes]], service: str, scope: str | None
    ) -> None:
        """Refuses a call to `service` without a valid key, or one without `scope`."""
        key = presented_key(metadata)
        if key is None:
            raise errors.unauthenticated(
                "missing API key: send it in 'x-api-key' or 'authorization: Bearer <key>'"
            )
        record = self.keys.verify(key)
        if record is None:
            raise errors.unauthenticated("invalid API key")
        if scope and scope not in record.scopes and ADMIN not in record.scopes:
            raise errors.permission_denied(
                f"key '{record.name}' lacks the '{scope}' scope needed for {service}", scope
            )

    def around(self, method: str, handler: Handler) -> Around | None:
        service = method.split("/")[1] if method.count("/") == 2 else method
        scope = SERVICE_SCOPES.get(service)

        async def unary(behaviour: Unary, request: Any, context: Context) -> Any:
            self.check(context.invocation_metadata() or (), service, scope)
            return await behaviour(request, context)

        def stream(behaviour: Stream, request: Any, context: Context) -> AsyncGenerator[Any, None]:
            self.check(context.invocation_metadata() or (), service, scope)
            return behaviour(request, context)

        return Around(unary, stream)

    def unknown(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        try:
            self.check(handler_call_details.invocation_metadata or (), "", None)
        except ServiceError as refused:
            return refusal(refused.to_status())
        return None
