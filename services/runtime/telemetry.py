"""Tracing and logs. W3C trace context rides in gRPC metadata on every hop (the OpenTelemetry
gRPC interceptors inject and extract it), so one request is one trace across the mesh."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from genmesh.runtime.settings import TelemetrySettings

_configured = False


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup(service: str, settings: TelemetrySettings) -> None:
    """Configures JSON logs on stderr and the tracer provider, once per process."""
    global _configured  # noqa: PLW0603 - process-wide providers are set exactly once
    if _configured:
        return
    _configured = True
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    resource = Resource.create(
        {"service.name": f"genmesh-{service}", "service.namespace": settings.service_namespace}
    )
    provider = TracerProvider(resource=resource)
    if settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint, insecure=True))
        )
    trace.set_tracer_provider(provider)


def shutdown() -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


class _TracingInterceptor(grpc.aio.ServerInterceptor):
    """OpenTelemetry's interceptor, except for health checks: they are not worth a span each,
    and its wrapper expects streaming handlers to be generators, which Health.Watch is not."""

    def __init__(self) -> None:
        self._inner = aio_server_interceptor()  # type: ignore[no-untyped-call]

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        if handler_call_details.method.startswith("/grpc.health.v1.Health/"):
            return await continuation(handler_call_details)
        return await self._inner.intercept_service(continuation, handler_call_details)


def server_interceptor() -> grpc.aio.ServerInterceptor:
    return _TracingInterceptor()


def trace_headers(metadata: Sequence[tuple[str, Any]]) -> list[tuple[str, str]]:
    """The current trace context as W3C headers, unless the metadata carries one already."""
    if any(key == "traceparent" for key, _ in metadata):
        return []
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return list(carrier.items())


def event(logger: logging.Logger, message: str, **fields: Any) -> None:
    """Logs a structured event: one JSON line with these fields."""
    logger.info(message, extra={"fields": fields})
