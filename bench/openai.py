"""The OpenAI edge against direct gRPC streaming: the same chat through the edge (the official
`openai` SDK, SSE) and through the router's GenerateStream, side by side in one run.

Starts a ttt service (the embedded SmolLM2 on llama.cpp, and the echo engine), a router with two
bindings on it (`smollm2`, greedy; `echo`, paced by a per-token delay so that it streams like a
model) and the edge in front of the router; each model serves as many streams at once as the
largest batch has. For each binding and for 1 and 8 concurrent streams
it runs rounds of one batch per path, the order alternating from round to round (as the other
benchmarks here do) so that drift in the machine's load hits both alike, and reports:
- tokens/s: all completion tokens (the usage each path reports) over the batch's wall time;
- time to first token: from the moment each stream's request starts to be sent to its first
  text, median per batch (as LLM serving benchmarks count it); beside it, from the batch's start.
  One asyncio client in this process drives every stream of a batch, so the later streams of a
  batch start after the earlier ones' requests were built and sent: the SDK's ~1.5 ms of work
  per request is paid in series before the last stream is even sent: the second figure counts
  that wait, the first does not (both count the client's work on the other streams after a
  stream was sent, which shares its event loop).
Ratios are medians over the rounds of edge over gRPC (tokens/s) and of edge minus gRPC (time to
first token). The client's own cost is in both paths; the edge's includes the SDK's request
building and SSE parsing, which is what an SDK user pays. Targets (DESIGN.md section 4): tokens/s
>= 0.95x direct, time to first token within +5 ms of direct.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on the path, where this file would shadow the
# `openai` package it measures: the repository's root takes its place.
# ruff: noqa: E402 - the imports must follow this.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openai import AsyncOpenAI

from bench.common import Streams, command_line, emit
from genmesh.client import Client, text_request
from genmesh.ttt.llama_engine import default_threads
from genmesh.v1 import common_pb2
from tests.support import API_KEY, ServiceProcess, echo_binding, router_config

PROMPT = "Write a short essay about the history of bread."
ECHO_PROMPT = "genmesh edge benchmark, one character per token. " * 2
RATE_TARGET = 0.95
TTFT_TARGET_MS = 5.0
PATHS = ("grpc", "edge")


# Runs one stream of a batch that started at the given time: its tokens, and the times from the
# batch's start to its request's start and to its first text.
One = Callable[[float], Awaitable[tuple[int, float, float]]]


async def grpc_stream(client: Client, binding: str, prompt: str, max_tokens: int) -> One:
    params = common_pb2.TextParameters(temperature=0, seed=1, max_tokens=max_tokens)
    request = text_request(prompt, binding=binding, parameters=params)

    async def one(start: float) -> tuple[int, float, float]:
        first = 0.0
        tokens = 0
        sent = time.perf_counter() - start
        async for event in client.generate_stream(request):
            if event.HasField("text_delta") and event.text_delta.text and not first:
                first = time.perf_counter() - start
            elif event.HasField("final"):
                tokens = event.final.usage.completion_tokens
        return tokens, sent, first

    return one


async def edge_stream(sdk: AsyncOpenAI, binding: str, prompt: str, max_tokens: int) -> One:
    async def one(start: float) -> tuple[int, float, float]:
        first = 0.0
        tokens = 0
        sent = time.perf_counter() - start
        stream = await sdk.chat.completions.create(
            model=binding,
            messages=[{"role": "user", "content": prompt}],
            temperature=0,
            seed=1,
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and not first:
                first = time.perf_counter() - start
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return tokens, sent, first

    return one


@dataclass
class Batch:
    streams: Streams  # first tokens from each request's start
    from_start: Streams  # first tokens from the batch's start


async def batch(one: One, streams: int) -> Batch:
    start = time.perf_counter()
    done = await asyncio.gather(*(one(start) for _ in range(streams)))
    wall = time.perf_counter() - start
    if not all(first for _, _, first in done):
        raise RuntimeError("a stream ended without text: its first token has no time")
    tokens = sum(t for t, _, _ in done)
    return Batch(
        Streams(tokens, wall, [first - sent for _, sent, first in done]),
        Streams(tokens, wall, [first for _, _, first in done]),
    )


async def compare(ones: dict[str, One], streams: int, rounds: int) -> dict[str, Any]:
    for one in ones.values():  # warm-up: connections, the prompt cache
        await batch(one, 1)
    measured: dict[str, list[Batch]] = {path: [] for path in PATHS}
    for round_ in range(rounds):
        order = PATHS if round_ % 2 == 0 else PATHS[::-1]
        for path in order:
            measured[path].append(await batch(ones[path], streams))
    pairs = list(zip(measured["grpc"], measured["edge"], strict=True))
    return {
        **{
            path: {
                "tokens_per_s": statistics.median(b.streams.tokens_per_s for b in batches),
                "ttft_ms": statistics.median(b.streams.ttft_ms for b in batches),
                "ttft_from_batch_start_ms": statistics.median(
                    b.from_start.ttft_ms for b in batches
                ),
                "tokens": batches[0].streams.tokens,
            }
            for path, batches in measured.items()
        },
        "tokens_per_s_edge_over_grpc": statistics.median(
            e.streams.tokens_per_s / g.streams.tokens_per_s for g, e in pairs
        ),
        "ttft_edge_minus_grpc_ms": statistics.median(
            e.streams.ttft_ms - g.streams.ttft_ms for g, e in pairs
        ),
        "ttft_from_batch_start_edge_minus_grpc_ms": statistics.median(
            e.from_start.ttft_ms - g.from_start.ttft_ms for g, e in pairs
        ),
    }


async def run(args: Any) -> dict[str, Any]:
    # Every stream of a batch is served at once, so its time to first token is the paths' own,
    # not its place in a queue (where a rate 0.5% lower moved the median by tens of ms).
    slots = max(args.streams)
    model = {
        "name": "smollm2",
        "engine": "llama.cpp",
        "options": {"threads": default_threads(), "context_size": 2048},
        "concurrency": slots,
        "queue_size": 64,
    }
    echo = {"name": "echo", "engine": "echo", "concurrency": slots, "queue_size": 64}
    ttt = ServiceProcess("ttt", {"models": [model, echo]})
    bindings = [
        {"name": "smollm2", "tasks": ["text"], "addresses": [ttt.address], "model": "smollm2"},
        {**echo_binding(ttt.address), "extra": {"delay_ms": args.delay_ms}},
    ]
    router = ServiceProcess("router", router_config(bindings))
    edge = ServiceProcess("edge", {"router_address": router.address})
    results: dict[str, Any] = {
        "rounds": args.rounds,
        "echo_delay_ms": args.delay_ms,
        "smollm2_max_tokens": args.max_tokens,
    }
    try:
        async with (
            Client(router.address, API_KEY) as client,
            AsyncOpenAI(
                base_url=f"http://{edge.address}/v1", api_key=API_KEY, max_retries=0, timeout=600
            ) as sdk,
        ):
            cases = {
                "smollm2": (PROMPT, args.max_tokens),
                "echo": (ECHO_PROMPT, len(ECHO_PROMPT)),
            }
            for binding, (prompt, max_tokens) in cases.items():
                if binding not in args.bindings:
                    continue
                ones = {
                    "grpc": await grpc_stream(client, binding, prompt, max_tokens),
                    "edge": await edge_stream(sdk, binding, prompt, max_tokens),
                }
                for streams in args.streams:
                    key = f"{binding}_{streams}_streams"
                    results[key] = await compare(ones, streams, args.rounds)
                    print(f"done: {key}", file=sys.stderr)
    finally:
        edge.terminate()
        router.terminate()
        ttt.terminate()
    measured = [k for k in results if k.endswith("_streams")]
    results["ratios"] = {
        f"{k}_tokens_per_s_edge_over_grpc": results[k]["tokens_per_s_edge_over_grpc"]
        for k in measured
    }
    results["targets"] = {k: f">= {RATE_TARGET}" for k in results["ratios"]}
    results["met"] = all(
        results[k]["tokens_per_s_edge_over_grpc"] >= RATE_TARGET
        and results[k]["ttft_edge_minus_grpc_ms"] <= TTFT_TARGET_MS
        for k in measured
    )
    return results


def report(results: dict[str, Any]) -> None:
    print(
        f"{'case':<22}{'gRPC tok/s':>11}{'edge tok/s':>11}{'ratio':>7}"
        f"{'gRPC ttft ms':>13}{'edge ttft ms':>13}{'diff ms':>9}{'diff from start':>16}"
    )
    for key, value in results.items():
        if not key.endswith("_streams"):
            continue
        g, e = value["grpc"], value["edge"]
        print(
            f"{key:<22}{g['tokens_per_s']:>11.1f}{e['tokens_per_s']:>11.1f}"
            f"{value['tokens_per_s_edge_over_grpc']:>7.3f}{g['ttft_ms']:>13.1f}"
            f"{e['ttft_ms']:>13.1f}{value['ttft_edge_minus_grpc_ms']:>+9.1f}"
            f"{value['ttft_from_batch_start_edge_minus_grpc_ms']:>+16.1f}"
        )
    print(
        f"medians over {results['rounds']} alternating rounds; targets: ratio >= {RATE_TARGET},"
        f" ttft diff <= +{TTFT_TARGET_MS} ms: {'met' if results['met'] else 'MISSED'}"
    )


def main() -> None:
    parser = command_line(__doc__)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=6, help="alternating batches per path")
    parser.add_argument("--max-tokens", type=int, default=64, help="SmolLM2 tokens per stream")
    parser.add_argument("--bindings", nargs="+", default=["smollm2", "echo"])
    parser.add_argument("--delay-ms", type=int, default=5, help="the echo's pace per token")
    args = parser.parse_args()
    emit(asyncio.run(run(args)), args.json, report)


if __name__ == "__main__":
    main()
