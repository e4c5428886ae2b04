"""Router overhead: the same requests to the ttt service directly and through the router.

Starts a ttt service with the deterministic echo engine and a router in front of it, then
measures side by side in one run:
- unary: latency percentiles of a short echo, InferenceService.Infer straight to the service
  (with the internal key) against GenerationService.Generate through the router; the batches
  alternate so drift in the machine's load hits both paths alike;
- streaming: a long echo (`extra.repeat`, one character per engine token), Infer against
  GenerateStream, in pairs run back to back in alternating order. The streaming ratio is the
  median over the pairs of characters/s through the router over characters/s direct, i.e. of the
  time until the whole text has arrived.

Characters, not messages, because every hop coalesces (genmesh.runtime.streams): text deltas
already waiting when the service or the router can write go out as one message (same text, same
order; the final event stays separate and last), so the echo, which makes tokens faster than
gRPC carries messages, arrives in a few large deltas on both paths; messages/s and characters
per message are reported beside the characters/s of each path, so the merging is visible. CPU
time per character of each process (this client, the router, the ttt service) is reported too:
on a shared machine it moves less than the rates do.

One synchronous grpcio client in this process drives both paths, so its own cost is in both;
the ratios are what matter. Targets (DESIGN.md section 4): unary p50 via the router <= 1.2x
direct; streaming (characters/s) >= 0.9x direct.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import command_line, emit, summarise, timed
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
UNARY_TARGET = 1.2
STREAM_TARGET = 0.9


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


class Processes:
    """CPU time of the processes on the paths: the services and this client."""

    def __init__(self, **services: ServiceProcess) -> None:
        self.processes = {name: psutil.Process(s.popen.pid) for name, s in services.items()}
        self.processes["client"] = psutil.Process()

    def cpu_seconds(self) -> dict[str, float]:
        times = {name: p.cpu_times() for name, p in self.processes.items()}
        return {name: t.user + t.system for name, t in times.items()}


@dataclass
class Stream:
    """One long stream's figures."""

    seconds: float
    messages: int
    chars: int
    cpu_s: dict[str, float]


def measure_stream(call: Callable[[], tuple[int, int]], processes: Processes) -> Stream:
    before = processes.cpu_seconds()
    start = time.perf_counter()
    messages, chars = call()
    elapsed = time.perf_counter() - start
    after = processes.cpu_seconds()
    return Stream(elapsed, messages, chars, {k: after[k] - before[k] for k in after})


def stream_summary(streams: list[Stream], path: str) -> dict[str, Any]:
    """Medians over the streams; CPU only for the processes the path goes through."""
    on_path = ("ttt", "router", "client") if path == "router" else ("ttt", "client")
    return {
        "chars_per_s": statistics.median(s.chars / s.seconds for s in streams),
        "messages_per_s": statistics.median(s.messages / s.seconds for s in streams),
        "chars_per_message": statistics.median(s.chars / s.messages for s in streams),
        "cpu_us_per_char": {
            name: statistics.median(s.cpu_s[name] / s.chars * 1e6 for s in streams)
            for name in on_path
        },
    }


def run(
    paths: Paths,
    processes: Processes,
    requests: int,
    rounds: int,
    streams: int,
    repeat: int,
) -> dict[str, Any]:
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
    measured: dict[str, list[Stream]] = {"direct": [], "router": []}
    for index in range(streams):
        order = ("direct", "router") if index % 2 == 0 else ("router", "direct")
        for path in order:
            measured[path].append(measure_stream(stream_calls[path], processes))
    pairs = list(zip(measured["direct"], measured["router"], strict=True))

    def paired(rate: Callable[[Stream], float]) -> float:
        return statistics.median(rate(router) / rate(direct) for direct, router in pairs)

    results: dict[str, Any] = {
        "unary": {path: summarise(samples) for path, samples in unary.items()},
        "streaming": {path: stream_summary(s, path) for path, s in measured.items()},
        "stream_chars": len(PROMPT) * repeat,
    }
    u = results["unary"]
    results["ratios"] = {
        "unary_p50_router_over_direct": u["router"]["p50_ms"] / u["direct"]["p50_ms"],
        "unary_p99_router_over_direct": u["router"]["p99_ms"] / u["direct"]["p99_ms"],
        "stream_chars_router_over_direct": paired(lambda s: s.chars / s.seconds),
        "stream_messages_router_over_direct": paired(lambda s: s.messages / s.seconds),
    }
    results["targets"] = {
        "unary_p50_router_over_direct": f"<= {UNARY_TARGET}",
        "stream_chars_router_over_direct": f">= {STREAM_TARGET}",
    }
    results["met"] = (
        results["ratios"]["unary_p50_router_over_direct"] <= UNARY_TARGET
        and results["ratios"]["stream_chars_router_over_direct"] >= STREAM_TARGET
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
    print(f"streaming ({results['stream_chars']} characters, medians over the streams):")
    for path in ("direct", "router"):
        s = results["streaming"][path]
        cpu = ", ".join(f"{name} {us:.0f}" for name, us in s["cpu_us_per_char"].items())
        print(
            f"  {path:<8}{s['chars_per_s']:>8.0f} chars/s {s['messages_per_s']:>8.0f} messages/s"
            f" {s['chars_per_message']:>6.2f} chars/message; CPU us per char: {cpu}"
        )
    ratios = results["ratios"]
    print(
        f"router/direct: unary p50 {ratios['unary_p50_router_over_direct']:.2f}x "
        f"(target <= {UNARY_TARGET}), p99 {ratios['unary_p99_router_over_direct']:.2f}x; "
        f"streaming characters/s {ratios['stream_chars_router_over_direct']:.2f}x "
        f"(target >= {STREAM_TARGET}), messages/s "
        f"{ratios['stream_messages_router_over_direct']:.2f}x (medians of pairs)"
    )
    print("targets met" if results["met"] else "TARGETS MISSED")


@contextlib.contextmanager
def echo_mesh() -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """A ttt service with the echo engine and a router in front of it, on free ports."""
    ttt = ServiceProcess("ttt", {})
    try:
        router = ServiceProcess("router", router_config([echo_binding(ttt.address)]))
        try:
            yield ttt, router
        finally:
            router.terminate()
    finally:
        ttt.terminate()


def main() -> None:
    parser = command_line(__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="unary requests per path")
    parser.add_argument("--rounds", type=int, default=10, help="alternating unary batches")
    parser.add_argument("--streams", type=int, default=8, help="long streams per path")
    parser.add_argument("--repeat", type=int, default=400, help="prompt repeats per long stream")
    args = parser.parse_args()
    with echo_mesh() as (ttt, router):
        paths = Paths(ttt.address, router.address)
        processes = Processes(ttt=ttt, router=router)
        try:
            results = run(paths, processes, args.requests, args.rounds, args.streams, args.repeat)
        finally:
            paths.close()
    emit(results, args.json, report)


if __name__ == "__main__":
    main()
