"""Router overhead: the same requests to the ttt service directly and through the router.

Starts a ttt service with the deterministic echo engine and a router in front of it, then
measures side by side in one run:
- unary: latency percentiles of a short echo, InferenceService.Infer straight to the service
  (with the internal key) against GenerationService.Generate through the router; the batches
  alternate so drift in the machine's load hits both paths alike;
- streaming: chunks/s of a long echo (`extra.repeat`), Infer against GenerateStream.

One synchronous grpcio client in this process drives both paths, so its own cost is in both;
the ratios are what matter. Targets (DESIGN.md section 4): unary p50 via the router <= 1.5x
direct; streaming >= 0.8x direct.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genmesh.client import text_request
from genmesh.v1 import (
    common_pb2,
    generation_pb2,
    generation_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
)
from tests.support import (
    API_KEY,
    INTERNAL_KEY,
    ServiceProcess,
    echo_binding,
    router_config,
)

PROMPT = "genmesh router overhead"
UNARY_TARGET = 1.5
STREAM_TARGET = 0.8


class Paths:
    """The two ways to the echo engine, over one channel each."""

    def __init__(self, ttt: str, router: str) -> None:
        self.ttt_channel = grpc.insecure_channel(ttt)
        self.router_channel = grpc.insecure_channel(router)
        self.inference = inference_pb2_grpc.InferenceServiceStub(self.ttt_channel)
        self.generation = generation_pb2_grpc.GenerationServiceStub(self.router_channel)
        self.internal = (("x-api-key", INTERNAL_KEY),)
        self.public = (("x-api-key", API_KEY),)

    def close(self) -> None:
        self.ttt_channel.close()
        self.router_channel.close()

    def infer(self, request: common_pb2.GenerateRequest) -> tuple[int, int]:
        """Messages and characters received straight from the service."""
        chunks = chars = 0
        opening = inference_pb2.InferRequest(request=request)
        for response in self.inference.Infer(iter([opening]), metadata=self.internal):
            chunks += 1
            chars += len(response.event.text_delta.text)
        return chunks, chars

    def generate(self, request: common_pb2.GenerateRequest) -> int:
        response = self.generation.Generate(request, metadata=self.public)
        return len(response.outputs[0].text)

    def generate_stream(self, request: common_pb2.GenerateRequest) -> tuple[int, int]:
        chunks = chars = 0
        opening = generation_pb2.GenerateStreamRequest(request=request)
        for response in self.generation.GenerateStream(opening, metadata=self.public):
            chunks += 1
            chars += len(response.event.text_delta.text)
        return chunks, chars


def echo_request(prompt: str, repeat: int = 1) -> common_pb2.GenerateRequest:
    request = text_request(
        prompt, parameters=common_pb2.TextParameters(max_tokens=len(prompt) * repeat)
    )
    if repeat > 1:
        request.extra.update({"repeat": repeat})
    return request


def timed(call: Callable[[], object], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarise(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(samples, 0.50) * 1e3,
        "p90_ms": percentile(samples, 0.90) * 1e3,
        "p99_ms": percentile(samples, 0.99) * 1e3,
        "mean_ms": statistics.fmean(samples) * 1e3,
    }


def run(paths: Paths, requests: int, rounds: int, streams: int, repeat: int) -> dict[str, Any]:
    short = echo_request(PROMPT)
    unary_calls: dict[str, Callable[[], object]] = {
        "direct": lambda: paths.infer(short),
        "router": lambda: paths.generate(short),
    }
    for warm_up in unary_calls.values():
        timed(warm_up, max(20, requests // 10))
    unary: dict[str, list[float]] = {"direct": [], "router": []}
    batch = max(1, requests // rounds)
    for round_ in range(rounds):
        order = ("direct", "router") if round_ % 2 == 0 else ("router", "direct")
        for path in order:
            unary[path] += timed(unary_calls[path], batch)

    long = echo_request(PROMPT, repeat)
    stream_calls: dict[str, Callable[[], tuple[int, int]]] = {
        "direct": lambda: paths.infer(long),
        "router": lambda: paths.generate_stream(long),
    }
    rates: dict[str, list[float]] = {"direct": [], "router": []}
    char_rates: dict[str, list[float]] = {"direct": [], "router": []}
    for index in range(streams):
        order = ("direct", "router") if index % 2 == 0 else ("router", "direct")
        for path in order:
            start = time.perf_counter()
            chunks, chars = stream_calls[path]()
            elapsed = time.perf_counter() - start
            rates[path].append(chunks / elapsed)
            char_rates[path].append(chars / elapsed)

    results: dict[str, Any] = {
        "unary": {path: summarise(samples) for path, samples in unary.items()},
        "stream_chunks_per_s": {path: statistics.median(r) for path, r in rates.items()},
        "stream_chars_per_s": {path: statistics.median(r) for path, r in char_rates.items()},
        "stream_chunks": len(PROMPT) * repeat,
    }
    u, s = results["unary"], results["stream_chunks_per_s"]
    results["ratios"] = {
        "unary_p50_router_over_direct": u["router"]["p50_ms"] / u["direct"]["p50_ms"],
        "unary_p99_router_over_direct": u["router"]["p99_ms"] / u["direct"]["p99_ms"],
        "stream_router_over_direct": s["router"] / s["direct"],
        "stream_chars_router_over_direct": results["stream_chars_per_s"]["router"]
        / results["stream_chars_per_s"]["direct"],
    }
    results["targets"] = {
        "unary_p50_router_over_direct": f"<= {UNARY_TARGET}",
        "stream_router_over_direct": f">= {STREAM_TARGET}",
    }
    results["met"] = (
        results["ratios"]["unary_p50_router_over_direct"] <= UNARY_TARGET
        and results["ratios"]["stream_router_over_direct"] >= STREAM_TARGET
    )
    return results


def report(results: dict[str, Any]) -> None:
    print(f"{'unary (short echo)':<20}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'mean ms':>9}")
    for path in ("direct", "router"):
        r = results["unary"][path]
        print(
            f"{path:<20}{r['p50_ms']:>9.3f}{r['p90_ms']:>9.3f}{r['p99_ms']:>9.3f}"
            f"{r['mean_ms']:>9.3f}"
        )
    rates, ratios = results["stream_chunks_per_s"], results["ratios"]
    chars = results["stream_chars_per_s"]
    print(
        f"streaming ({results['stream_chunks']} characters): direct {rates['direct']:.0f} "
        f"chunks/s ({chars['direct']:.0f} chars/s), router {rates['router']:.0f} chunks/s "
        f"({chars['router']:.0f} chars/s)"
    )
    print(
        f"router/direct: unary p50 {ratios['unary_p50_router_over_direct']:.2f}x "
        f"(target <= {UNARY_TARGET}), p99 {ratios['unary_p99_router_over_direct']:.2f}x; "
        f"streaming {ratios['stream_router_over_direct']:.2f}x (target >= {STREAM_TARGET}), "
        f"characters {ratios['stream_chars_router_over_direct']:.2f}x"
    )
    print("targets met" if results["met"] else "TARGETS MISSED")


@contextlib.contextmanager
def echo_mesh() -> Iterator[tuple[str, str]]:
    """A ttt service with the echo engine and a router in front of it, on free ports."""
    ttt = ServiceProcess("ttt", {})
    try:
        router = ServiceProcess("router", router_config([echo_binding(ttt.address)]))
        try:
            yield ttt.address, router.address
        finally:
            router.terminate()
    finally:
        ttt.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="unary requests per path")
    parser.add_argument("--rounds", type=int, default=10, help="alternating unary batches")
    parser.add_argument("--streams", type=int, default=6, help="long streams per path")
    parser.add_argument("--repeat", type=int, default=400, help="prompt repeats per long stream")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    with echo_mesh() as (ttt, router):
        paths = Paths(ttt, router)
        try:
            results = run(paths, args.requests, args.rounds, args.streams, args.repeat)
        finally:
            paths.close()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        report(results)


if __name__ == "__main__":
    main()
