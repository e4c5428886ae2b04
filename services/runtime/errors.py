"""gRPC errors with google.rpc details.

Handlers raise `ServiceError` (through the helpers below); the error interceptor turns it into a
status with BadRequest, ErrorInfo and RetryInfo details, so clients in any language can act on it.
Unexpected exceptions become INTERNAL with an opaque message: a stack trace never leaves a process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "genmesh.dev"
# A status travels in trailing metadata, which clients cap (16 KiB by default; more and the
# client sees RESOURCE_EXHAUSTED without details): texts that may echo client input are clipped,
# and only the first violations are listed.
MAX_TEXT = 512
MAX_VIOLATIONS = 16


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "\u2026"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


@dataclass
class ServiceError(Exception):
    """An error meant for the client."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    violations: Sequence[FieldViolation] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    retry_after: float | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def to_status(self) -> grpc.Status:
        details: list[any_pb2.Any] = []
        if self.violations:
            bad_request = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=_clip(v.field), description=_clip(v.description)
                    )
                    for v in self.violations[:MAX_VIOLATIONS]
                ]
            )
            details.append(_pack(bad_request))
        if self.reason:
            info = error_details_pb2.ErrorInfo(
                reason=self.reason,
                domain=DOMAIN,
                metadata={k: _clip(v) for k, v in self.metadata.items()},
            )
            details.append(_pack(info))
        if self.retry_after is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_after * 1e9))
            details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        message = _clip(self.message)
        proto = status_pb2.Status(code=self.code.value[0], message=message, details=details)
        status: grpc.Status = rpc_status.to_status(proto)
        return status


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def invalid_argument(
    message: str, *violations: FieldViolation, reason: str = "INVALID_ARGUMENT"
) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message, reason, violations)


def check_response_size(size: int, limit: int, field_name: str, advice: str) -> None:
    """Refuses a request whose answer (of `size` bytes) is larger than a message may carry: sent
    anyway, it would fail as RESOURCE_EXHAUSTED without details, which reads as an overload to
    wait out, when it is the request that must change."""
    if size > limit:
        raise invalid_argument(
            f"the answer would take {size} bytes, more than the {limit} a message may carry",
            FieldViolation(field_name, advice),
            reason="RESPONSE_TOO_LARGE",
        )


def not_found(message: str, kind: str, name: str, field_name: str) -> ServiceError:
    """An unknown binding, personality or model; names what was asked for."""
    return ServiceError(
        grpc.StatusCode.NOT_FOUND,
        message,
        reason=f"{kind.upper()}_NOT_FOUND",
        violations=[FieldViolation(field_name, f"unknown {kind} '{name}'")],
        metadata={kind: name},
    )


def resource_exhausted(
    message: str, retry_after: float, reason: str = "QUEUE_FULL"
) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, message, reason, retry_after=retry_after
    )


def unavailable(message: str, reason: str = "BACKEND_UNAVAILABLE", **metadata: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.UNAVAILABLE, message, reason, metadata=metadata, retry_after=1.0
    )


def unauthenticated(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAUTHENTICATED, message, "API_KEY_INVALID")


def permission_denied(message: str, scope: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.PERMISSION_DENIED, message, "SCOPE_MISSING", metadata={"scope": scope}
    )


def deadline_exceeded(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, message, "DEADLINE_EXCEEDED")


def from_rpc_error(error: grpc.aio.AioRpcError) -> ServiceError:
    """Re-raises a backend's error to our own client, keeping its code and details."""
    return _RelayedError(error)


class _RelayedError(ServiceError):
    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        super().__init__(error.code(), error.details() or error.code().name)
        self._error = error

    def to_status(self) -> grpc.Status:
        metadata = self._error.trailing_metadata() or ()
        for key, value in metadata:
            if key == "grpc-status-details-bin" and isinstance(value, bytes):
                status: grpc.Status = rpc_status.to_status(status_pb2.Status.FromString(value))
                return status
        return super().to_status()


__all__ = [
    "FieldViolation",
    "ServiceError",
    "check_response_size",
    "deadline_exceeded",
    "from_rpc_error",
    "invalid_argument",
    "not_found",
    "permission_denied",
    "resource_exhausted",
    "unauthenticated",
    "unavailable",
]
