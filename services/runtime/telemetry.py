"""Tracing, metrics and logs. W3C trace context rides in gRPC metadata on every hop (mesh
channels inject it, the server interceptor extracts it), so one request is one trace across the
mesh; spans go to the OTLP endpoint in the settings."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import sys
import time
from collections.abc import AsyncGenerator, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import Gauge

from genmesh.runtime import metrics
from genmesh.runtime.interceptors import Around, Context, Handler, Interceptor, Stream, Unary
from genmesh.runtime.settings import TelemetrySettings
from genmesh.v1 import common_pb2, inference_pb2, program_pb2

log = logging.getLogger(__name__)
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
    """Configures JSON logs on stderr and, when spans have somewhere to go, the tracer provider,
    once per process. Without an OTLP endpoint the API's no-op tracer stays: its spans carry the
    caller's trace context on to the next hop, and no span is built only to be dropped (a
    recording span cost every call tens of microseconds)."""
    global _configured  # noqa: PLW0603 - process-wide providers are set exactly once
    if _configured:
        return
    _configured = True
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    if not settings.otlp_endpoint:
        return
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    resource = Resource.create(
        {"service.name": f"genmesh-{service}", "service.namespace": settings.service_namespace}
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint, insecure=True))
    )
    trace.set_tracer_provider(provider)


def shutdown() -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


_SANDBOX_EXECUTE = "/genmesh.v1.SandboxService/Execute"
_OUTPUT_EVENTS = frozenset({"text_delta", "audio_chunk", "image_preview", "transcript"})
_OPERATION = "generate_content"


_GENERATION = frozenset(
    {
        "/genmesh.v1.GenerationService/Generate",
        "/genmesh.v1.GenerationService/GenerateStream",
        "/genmesh.v1.GenerationService/Converse",
        "/genmesh.v1.InferenceService/Infer",
        "/genmesh.v1.InferenceService/Generate",
    }
)
Metadata = Collection[tuple[str, str | bytes]]


class _MetadataGetter(Getter[Metadata]):
    """Reads W3C headers from gRPC invocation metadata (a sequence of key/value pairs)."""

    def get(self, carrier: Metadata, key: str) -> list[str] | None:
        values = [v for k, v in carrier if k == key and isinstance(v, str)]
        return values or None

    def keys(self, carrier: Metadata) -> list[str]:
        return [k for k, _ in carrier]


@dataclass(frozen=True)
class _Rpc:
    """What the tracing interceptor knows of a method, once: its span's name and attributes, and
    the gauge of its open streams (for a streamed one)."""

    method: str
    name: str
    attributes: dict[str, str]
    tracer: trace.Tracer
    active: Gauge | None


_GETTER = _MetadataGetter()


class _Observed:
    """One RPC's span and what its responses say: first output, final result, program result.
    As a context manager, it makes the span current for the call (so that its own calls are its
    children) and ends the RPC with the status code it finished with. A failure of its own is
    logged and never changes the call's outcome: telemetry is not worth a request."""

    def __init__(self, rpc: _Rpc, context: Context) -> None:
        self.rpc = rpc
        self.method = rpc.method
        self.context = context
        self.start = time.monotonic()
        self.first_output: float | None = None
        self.final: common_pb2.GenerateResponse | None = None
        self.program: program_pb2.ProgramResult | None = None
        self.span: trace.Span = trace.INVALID_SPAN
        self._token: contextvars.Token[otel_context.Context] | None = None
        self._counted = False
        self._failed = False

    def _failure(self, doing: str) -> None:
        """Logs a failure of telemetry itself, once per call."""
        if not self._failed:
            self._failed = True
            log.exception("telemetry failed to %s for %s", doing, self.method)

    def see(self, message: Any) -> None:
        """Cheap per message: a field check, then nothing once the outcome is known."""
        try:
            if isinstance(message, inference_pb2.InferenceServiceGenerateResponse):
                message = message.response
            if isinstance(message, common_pb2.GenerateResponse):
                self.final = message
                return
            event = getattr(message, "event", None)
            if isinstance(event, common_pb2.StreamEvent):
                kind = event.WhichOneof("event")
                if kind == "final":
                    self.final = event.final
                elif self.first_output is None and kind in _OUTPUT_EVENTS:
                    self.first_output = time.monotonic()
            elif self.method == _SANDBOX_EXECUTE and message.WhichOneof("message") == "result":
                self.program = message.result
        except Exception:
            self._failure("observe a response")

    def __enter__(self) -> _Observed:
        rpc = self.rpc
        try:
            if rpc.active is not None:
                rpc.active.inc()
                self._counted = True
            parent = propagate.extract(self.context.invocation_metadata() or (), getter=_GETTER)
            self.span = rpc.tracer.start_span(
                rpc.name,
                context=parent,
                kind=trace.SpanKind.SERVER,
                attributes=rpc.attributes,
                record_exception=False,
                set_status_on_exception=False,
            )
            self._token = otel_context.attach(trace.set_span_in_context(self.span, parent))
        except Exception:
            self._failure("start the span")
        return self

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        try:
            self.end(self.code(exc))
        except Exception:
            self._failure("record the outcome")
        try:
            if self._token is not None:
                otel_context.detach(self._token)
            if self._counted and self.rpc.active is not None:
                self.rpc.active.dec()
            self.span.end()
        except Exception:
            self._failure("end the span")

    def code(self, exc: BaseException | None) -> grpc.StatusCode:
        """The call's final code: the one set on its context (inner interceptors map errors).
        A stream closed where it stopped (GeneratorExit) ended because its write was
        cancelled: the client went away, or the deadline or the server's grace ran out."""
        if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            return grpc.StatusCode.CANCELLED
        code = self.context.code()
        if isinstance(code, grpc.StatusCode):
            return code
        return grpc.StatusCode.UNKNOWN if exc else grpc.StatusCode.OK

    def end(self, code: grpc.StatusCode) -> None:
        """Span attributes and metrics for the finished RPC."""
        self.span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code != grpc.StatusCode.OK:
            self.span.set_status(trace.StatusCode.ERROR, code.name)
        if self.final is not None or self.method in _GENERATION:
            self._generation(code)
        if self.program is not None:
            self._program(self.program)

    def _generation(self, code: grpc.StatusCode) -> None:
        final = self.final or common_pb2.GenerateResponse()
        elapsed = time.monotonic() - self.start
        model = final.model
        usage = final.usage
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": _OPERATION,
            "gen_ai.usage.input_tokens": usage.prompt_tokens,
            "gen_ai.usage.output_tokens": usage.completion_tokens,
            "gen_ai.response.finish_reasons": [common_pb2.FinishReason.Name(final.finish_reason)],
        }
        for key, value in (
            ("genmesh.request_id", final.request_id),
            ("genmesh.binding", final.binding),
            ("gen_ai.request.model", model),
            ("gen_ai.response.model", model),
        ):
            if value:
                attributes[key] = value
        error = "" if code == grpc.StatusCode.OK else code.name
        metrics.REQUEST_DURATION.labels(_OPERATION, model, error).observe(elapsed)
        first: float | None = None
        if self.first_output is not None:
            first = self.first_output - self.start
        elif final.timings.HasField("first_token"):
            # A unary answer: the service timed its first output itself.
            first = final.timings.first_token.ToTimedelta().total_seconds()
        if first is not None:
            attributes["genmesh.time_to_first_token_s"] = first
            metrics.TIME_TO_FIRST_TOKEN.labels(_OPERATION, model).observe(first)
            if usage.completion_tokens > 1:
                per_token = (elapsed - first) / (usage.completion_tokens - 1)
                metrics.TIME_PER_OUTPUT_TOKEN.labels(_OPERATION, model).observe(per_token)
        if self.final is not None:
            metrics.TOKEN_USAGE.labels(_OPERATION, model, "input").observe(usage.prompt_tokens)
            metrics.TOKEN_USAGE.labels(_OPERATION, model, "output").observe(usage.completion_tokens)
        self.span.set_attributes(attributes)

    def _program(self, result: program_pb2.ProgramResult) -> None:
        kind = result.error.kind
        outcome = (
            "ok"
            if kind == program_pb2.ProgramError.KIND_UNSPECIFIED
            else program_pb2.ProgramError.Kind.Name(kind).removeprefix("KIND_").lower()
        )
        metrics.SANDBOX_RUNS.labels(outcome).inc()
        if kind == program_pb2.ProgramError.KIND_VIOLATION:
            layer = "dialect" if result.error.type == "DialectError" else "runtime"
            metrics.SANDBOX_VIOLATIONS.labels(layer).inc()
        self.span.set_attributes(
            {
                "genmesh.sandbox.outcome": outcome,
                "genmesh.sandbox.calls": len(result.call_log.calls),
            }
        )


class TracingInterceptor(Interceptor):
    """A SERVER span per RPC, child of the caller's W3C context, plus the RPC's metrics.

    Health checks are left alone: they are not worth a span each. Generation and sandbox
    figures come from the responses (`_Observed`), so services need no code of their own.
    """

    skips_health = True

    def __init__(self) -> None:
        super().__init__()
        self._tracer = trace.get_tracer("genmesh")

    def around(self, method: str, handler: Handler) -> Around | None:
        name = method.lstrip("/")
        service, _, rpc_name = name.partition("/")
        rpc = _Rpc(
            method,
            name,
            {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc_name},
            self._tracer,
            metrics.ACTIVE_STREAMS.labels(name) if handler.response_streaming else None,
        )

        async def unary(behaviour: Unary, request: Any, context: Context) -> Any:
            with _Observed(rpc, context) as call:
                response = await behaviour(request, context)
                call.see(response)
                return response

        async def stream(
            behaviour: Stream, request: Any, context: Context
        ) -> AsyncGenerator[Any, None]:
            with _Observed(rpc, context) as call:
                async for response in behaviour(request, context):
                    call.see(response)
                    yield response

        return Around(unary, stream)


def span(name: str, **attributes: str | int) -> Any:
    """A span of this process's own work, child of the current one (a context manager)."""
    return trace.get_tracer("genmesh").start_as_current_span(name, attributes=attributes)


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
