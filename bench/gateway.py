"""REST gateway overhead: the same requests to the router over gRPC and through the gateway.

Measures, side by side in one run against the deterministic echo engine:
- unary Generate: latency percentiles and requests/s over gRPC (grpcio, one channel) and over
  REST (POST /v1/generate, one keep-alive HTTP/1.1 connection); the batches alternate so drift in
  the machine's load hits both paths alike;
- streaming relay: characters/s of a long echo over GenerateStream and over NDJSON.

Both clients are Python in this process, so the figures include each client's own cost; the
ratios are what matter. It starts a ttt service with the echo engine, a router and the gateway
on free ports; `--router`, `--gateway` and `--api-key` point it at a running mesh instead.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import command_line, emit, summarise, timed
from genmesh.client import text_request
from genmesh.v1 import common_pb2, generation_pb2, generation_pb2_grpc
from tests.gateway.process import GatewayProcess
from tests.support import API_KEY, ServiceProcess, echo_binding, router_config

PROMPT = "genmesh benchmark"
STREAM_CHARS = 4000


@dataclass(frozen=True)
class Target:
    router: str
    gateway_port: int
    api_key: str


@contextlib.contextmanager
def echo_mesh() -> Iterator[Target]:
    """A ttt service with the echo engine, a router and the gateway, on free ports."""
    with contextlib.ExitStack() as stack:
        ttt = ServiceProcess("ttt", {})
        stack.callback(ttt.terminate)
        # A health-check interval (and timeout) that a loaded machine does not trip over.
        config = router_config([echo_binding(ttt.address)], health_check_interval_seconds=2.0)
        router = ServiceProcess("router", config)
        stack.callback(router.terminate)
        gateway = GatewayProcess(router.address)
        stack.callback(gateway.terminate)
        yield Target(router.address, gateway.port, API_KEY)


class Grpc:
    def __init__(self, target: Target) -> None:
        self.channel = grpc.insecure_channel(target.router)
        self.stub = generation_pb2_grpc.GenerationServiceStub(self.channel)
        self.metadata = (("x-api-key", target.api_key),)

    def generate(self, request: common_pb2.GenerateRequest) -> str:
        response: common_pb2.GenerateResponse = self.stub.Generate(request, metadata=self.metadata)
        return response.outputs[0].text

    def stream(self, request: common_pb2.GenerateRequest) -> int:
        chars = 0
        stream_request = generation_pb2.GenerateStreamRequest(request=request)
        for message in self.stub.GenerateStream(stream_request, metadata=self.metadata):
            chars += len(message.event.text_delta.text)
        return chars


class Rest:
    def __init__(self, target: Target) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", target.gateway_port, timeout=60)
        self.headers = {"Content-Type": "application/json", "X-API-Key": target.api_key}

    def post(self, path: str, body: dict[str, Any]) -> http.client.HTTPResponse:
        self.conn.request("POST", path, json.dumps(body).encode(), self.headers)
        response = self.conn.getresponse()
        if response.status != 200:
            sys.exit(f"{path}: HTTP {response.status}: {response.read()!r}")
        return response

    def wait_healthy(self, timeout: float = 60) -> None:
        """Until the router has seen an echo replica healthy (it checks on an interval)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.conn.request("GET", "/v1/bindings", headers=self.headers)
            bindings = json.loads(self.conn.getresponse().read())["bindings"]
            if any(b["name"] == "echo" and b["healthy_replicas"] for b in bindings):
                return
            time.sleep(0.1)
        sys.exit("the echo binding never became healthy")

    def generate(self, body: dict[str, Any]) -> str:
        text: str = json.loads(self.post("/v1/generate", body).read())["outputs"][0]["text"]
        return text

    def stream(self, body: dict[str, Any]) -> int:
        chars = 0
        for line in self.post("/v1/generate:stream", {"request": body}):
            delta = json.loads(line)["result"]["event"].get("text_delta")
            chars += len(delta["text"]) if delta else 0
        return chars


def run(target: Target, requests: int, rounds: int, streams: int) -> dict[str, Any]:
    direct, rest = Grpc(target), Rest(target)
    rest.wait_healthy()
    request = text_request(PROMPT)
    body = {"task": "TASK_TEXT", "inputs": [{"text": PROMPT}]}
    assert direct.generate(request) == rest.generate(body) == PROMPT
    unary_calls: dict[str, Callable[[], str]] = {
        "grpc": lambda: direct.generate(request),
        "rest": lambda: rest.generate(body),
    }
    for warm_up in unary_calls.values():
        timed(warm_up, 200)
    unary: dict[str, list[float]] = {"grpc": [], "rest": []}
    batch = max(1, requests // rounds)
    for round_ in range(rounds):
        order = ("grpc", "rest") if round_ % 2 == 0 else ("rest", "grpc")
        for path in order:
            unary[path] += timed(unary_calls[path], batch)

    long_text = "x" * STREAM_CHARS
    params = common_pb2.TextParameters(max_tokens=STREAM_CHARS)
    long_request = text_request(long_text, parameters=params)
    long_body = {
        "task": "TASK_TEXT",
        "inputs": [{"text": long_text}],
        "text": {"max_tokens": STREAM_CHARS},
    }
    stream_calls: dict[str, Callable[[], int]] = {
        "grpc": lambda: direct.stream(long_request),
        "rest": lambda: rest.stream(long_body),
    }
    stream_rates: dict[str, list[float]] = {"grpc": [], "rest": []}
    for _ in range(streams):
        for path, stream in stream_calls.items():
            start = time.perf_counter()
            chars = stream()
            stream_rates[path].append(chars / (time.perf_counter() - start))

    results: dict[str, Any] = {path: summarise(samples) for path, samples in unary.items()}
    results["stream_chars_per_s"] = {p: statistics.median(r) for p, r in stream_rates.items()}
    results["ratios"] = {
        "unary_p50_rest_over_grpc": results["rest"]["p50_ms"] / results["grpc"]["p50_ms"],
        "unary_p99_rest_over_grpc": results["rest"]["p99_ms"] / results["grpc"]["p99_ms"],
        "unary_p50_overhead_ms": results["rest"]["p50_ms"] - results["grpc"]["p50_ms"],
        "stream_rest_over_grpc": results["stream_chars_per_s"]["rest"]
        / results["stream_chars_per_s"]["grpc"],
    }
    return results


def report(results: dict[str, Any]) -> None:
    print(
        f"{'unary Generate':<16}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'req/s':>9}"
    )
    for path in ("grpc", "rest"):
        r = results[path]
        print(
            f"{path:<16}{r['p50_ms']:>9.3f}{r['p90_ms']:>9.3f}{r['p99_ms']:>9.3f}"
            f"{r['mean_ms']:>9.3f}{r['req_per_s']:>9.0f}"
        )
    ratios, rates = results["ratios"], results["stream_chars_per_s"]
    print(
        f"REST/gRPC unary p50 {ratios['unary_p50_rest_over_grpc']:.2f}x "
        f"(+{ratios['unary_p50_overhead_ms']:.3f} ms), "
        f"p99 {ratios['unary_p99_rest_over_grpc']:.2f}x"
    )
    print(
        f"stream relay: gRPC {rates['grpc']:.0f} chars/s, REST NDJSON {rates['rest']:.0f} chars/s "
        f"({ratios['stream_rest_over_grpc']:.2f}x)"
    )


def main() -> None:
    parser = command_line(__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="unary requests per path")
    parser.add_argument("--rounds", type=int, default=10, help="alternating batches")
    parser.add_argument("--streams", type=int, default=5, help="long streams per path")
    parser.add_argument("--router", help="router address of a running mesh")
    parser.add_argument("--gateway", type=int, help="gateway port of a running mesh")
    parser.add_argument("--api-key", default=os.environ.get("GENMESH_API_KEY"))
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.router and args.gateway and args.api_key:
            target = Target(args.router, args.gateway, args.api_key)
        else:
            target = stack.enter_context(echo_mesh())
        results = run(target, args.requests, args.rounds, args.streams)
    emit(results, args.json, report)


if __name__ == "__main__":
    main()
