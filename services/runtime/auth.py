"""API keys: stored as SHA-256 digests, compared in constant time, scoped per service.

Every RPC except grpc.health.v1 needs a key, in `x-api-key` or `authorization: Bearer <key>`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Any

import grpc

from genmesh.runtime import errors
from genmesh.runtime.interceptors import CallGate, Continuation, wrap_handler
from genmesh.runtime.settings import ApiKey, ServiceSettings

ADMIN = "admin"
INTERNAL = "internal"
# The scope each service needs; services not listed need only a valid key.
SERVICE_SCOPES = {
    "genmesh.v1.GenerationService": "generate",
    "genmesh.v1.TokenizerService": "generate",
    "genmesh.v1.AgentService": "agent",
    "genmesh.v1.InferenceService": INTERNAL,
    "genmesh.v1.SandboxService": INTERNAL,
}
PUBLIC_SERVICES = frozenset({"grpc.health.v1.Health"})


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


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks the key and its scope, and translates errors, for every handler."""

    def __init__(self, keys: KeyStore, gate: CallGate | None = None) -> None:
        self.keys = keys
        self.gate = gate

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        service = method.split("/")[1] if method.count("/") == 2 else method
        if service in PUBLIC_SERVICES:
            return handler
        scope = SERVICE_SCOPES.get(service)
        metadata = handler_call_details.invocation_metadata or ()
        key = presented_key(metadata)

        async def guard(_: grpc.aio.ServicerContext[Any, Any]) -> None:
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

        return wrap_handler(handler, guard, method, self.gate)
