"""Prometheus metrics, named after the OpenTelemetry GenAI semantic conventions.

Names and label keys are the conventions' as the OpenTelemetry Prometheus exporter spells them
(dots become underscores, the unit becomes a suffix): `gen_ai.server.time_to_first_token` is
`gen_ai_server_time_to_first_token_seconds` with the label `gen_ai_request_model`. Buckets are
the conventions' advisory boundaries. The mesh's own gauges and counters use a `genmesh_` prefix.

Generation and sandbox figures are read off the messages each RPC returns (see
`genmesh.runtime.telemetry`), so a service records them without code of its own; queue depth is
sampled from each admission queue when scraped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

OPERATION = "gen_ai_operation_name"
MODEL = "gen_ai_request_model"

REQUEST_DURATION = Histogram(
    "gen_ai_server_request_duration_seconds",
    "GenAI server request duration: from the request to its last response.",
    [OPERATION, MODEL, "error_type"],
    buckets=(0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96),
)
TIME_TO_FIRST_TOKEN = Histogram(
    "gen_ai_server_time_to_first_token_seconds",
    "Time from the request to its first output chunk (token, audio or preview).",
    [OPERATION, MODEL],
    buckets=(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0),
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "gen_ai_server_time_per_output_token_seconds",
    "Time per output token after the first one.",
    [OPERATION, MODEL],
    buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5),
)
TOKEN_USAGE = Histogram(
    "gen_ai_client_token_usage",
    "Tokens per request, by gen_ai_token_type (input or output), as each hop saw them.",
    [OPERATION, MODEL, "gen_ai_token_type"],
    buckets=(1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304),
)
QUEUE_DEPTH = Gauge(
    "genmesh_queue_depth",
    "Requests waiting for a slot of a model (ttt) or binding (router).",
    ["queue"],
)
ACTIVE_STREAMS = Gauge(
    "genmesh_active_streams",
    "Streaming RPCs in progress, by method.",
    ["method"],
)
SANDBOX_RUNS = Counter(
    "genmesh_sandbox_runs",
    "Sandbox program runs, by outcome (ok or the ProgramError kind).",
    ["outcome"],
)
SANDBOX_VIOLATIONS = Counter(
    "genmesh_sandbox_violations",
    "Runs stopped for breaking a rule: the dialect's (rejected before running) or the OS jail's.",
    ["layer"],
)


def track_queue(name: str, depth: Callable[[], float]) -> None:
    """Reports `depth()` as the queue depth of `name` at every scrape."""
    QUEUE_DEPTH.labels(name).set_function(depth)


def serve(host: str, port: int | None) -> int | None:
    """Starts the `/metrics` endpoint (a daemon thread) when a port is set; the bound port."""
    if port is None:
        return None
    server, _ = start_http_server(port, addr=host)
    bound: int = server.server_port
    return bound
