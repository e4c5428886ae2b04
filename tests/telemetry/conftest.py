"""A traced mesh: ttt (echo), sandbox and router exporting spans to a real OTLP receiver (a gRPC
TraceService server) and serving Prometheus metrics on ports of their own."""

from __future__ import annotations

import secrets
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2 as otlp_common_pb2
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ServiceProcess, echo_binding, router_config

# Export batches every 100 ms instead of every 5 s, so spans arrive while the test waits.
TRACING_ENV = {"OTEL_BSP_SCHEDULE_DELAY": "100"}


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]


def any_value(value: otlp_common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span exported to it."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()

    def Export(  # noqa: N802 - gRPC method name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: any_value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        Span(
                            service=str(resource.get("service.name")),
                            name=span.name,
                            kind=span.SpanKind.Name(span.kind),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            attributes={a.key: any_value(a.value) for a in span.attributes},
                        )
                    )
        with self.lock:
            self.spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(
        self, trace_id: str, until: Callable[[list[Span]], bool], timeout: float = 30
    ) -> list[Span]:
        """The spans of one trace, once `until` holds for them."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                spans = [s for s in self.spans if s.trace_id == trace_id]
            if until(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.05)


@dataclass(frozen=True)
class TracedMesh:
    receiver: Receiver
    otlp_endpoint: str
    ttt: ServiceProcess
    sandbox: ServiceProcess
    router: ServiceProcess


def metrics_port(process: ServiceProcess) -> int:
    return int(process.events("listening")[0]["metrics_port"])


def scrape(process: ServiceProcess) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of the process's /metrics endpoint: name -> [(labels, value)]."""
    url = f"http://127.0.0.1:{metrics_port(process)}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def new_trace() -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """A client-side trace id and span id, and the W3C header that carries them."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, (("traceparent", f"00-{trace_id}-{span_id}-01"),)


@pytest.fixture(scope="session")
def receiver() -> Iterator[tuple[Receiver, str]]:
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield receiver, f"127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture(scope="session")
def traced(receiver: tuple[Receiver, str]) -> Iterator[TracedMesh]:
    spans, endpoint = receiver
    observed = {"telemetry": {"otlp_endpoint": endpoint}, "metrics_port": 0}
    ttt = ServiceProcess("ttt", observed, TRACING_ENV)
    sandbox = ServiceProcess("sandbox", observed, TRACING_ENV)
    config = router_config([echo_binding(ttt.address)], sandbox_address=sandbox.address, **observed)
    router = ServiceProcess("router", config, TRACING_ENV)
    yield TracedMesh(spans, endpoint, ttt, sandbox, router)
    for process in (router, sandbox, ttt):
        process.terminate()
