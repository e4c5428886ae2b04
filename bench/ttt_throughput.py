"""Text generation throughput: the whole mesh against llama.cpp called in-process.

Starts a ttt service (llama.cpp engine, embedded SmolLM2 Q4_1) behind a router, and loads the same
GGUF in this process with llama-cpp-python. For 1, 4 and 8 concurrent streams, side by side and
alternating so drift in the machine's load hits both alike, it measures:
- tokens/s: all completion tokens over the wall time of the batch;
- time to first token: from the batch start to each stream's first token (so queueing counts).

Same settings on both sides: greedy, the same prompt and system prompt, the same max_tokens and
thread count. One llama.cpp context runs one generation at a time, so in-process the streams run
back to back; the mesh queues them in the service's per-model limit. Target (DESIGN.md section 4):
mesh >= 0.95x in-process tokens/s.

`--engines` also times each CPU engine in-process on one stream (which one is fastest here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genmesh.client import Client, text_request
from genmesh.ttt.engine import ChatMessage, SamplingParams, TextEngine
from genmesh.ttt.llama_engine import default_threads
from genmesh.ttt.models import default_gguf, derived_model
from genmesh.v1 import common_pb2
from tests.support import API_KEY, ServiceProcess, router_config

SYSTEM = "You are a helpful assistant."
PROMPT = "Write a short essay about the history of bread."
TARGET = 0.95
THREADS = default_threads()


@dataclass
class Run:
    tokens: int
    wall_s: float
    first_token_s: list[float]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    @property
    def ttft_p50_ms(self) -> float:
        return statistics.median(self.first_token_s) * 1000


async def mesh_run(client: Client, streams: int, max_tokens: int) -> Run:
    params = common_pb2.TextParameters(temperature=0, max_tokens=max_tokens)
    start = time.perf_counter()

    async def one() -> tuple[int, float]:
        first = 0.0
        tokens = 0
        async for event in client.generate_stream(
            text_request(PROMPT, system=SYSTEM, parameters=params)
        ):
            if event.HasField("text_delta") and not first:
                first = time.perf_counter() - start
            if event.HasField("final"):
                tokens = event.final.usage.completion_tokens
        return tokens, first

    results = await asyncio.gather(*(one() for _ in range(streams)))
    wall = time.perf_counter() - start
    return Run(sum(t for t, _ in results), wall, [f for _, f in results])


def inprocess_run(llm: Any, streams: int, max_tokens: int) -> Run:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]
    start = time.perf_counter()
    tokens = 0
    firsts = []
    for _ in range(streams):
        first = 0.0
        for chunk in llm.create_chat_completion(
            messages, temperature=0, max_tokens=max_tokens, stream=True
        ):
            if chunk["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter() - start
                tokens += 1
        firsts.append(first)
    return Run(tokens, time.perf_counter() - start, firsts)


async def engine_run(engine: TextEngine, max_tokens: int) -> Run:
    messages = [ChatMessage("system", SYSTEM), ChatMessage("user", PROMPT)]
    start = time.perf_counter()
    first = 0.0
    tokens = 0
    async for chunk in engine.generate(
        messages, SamplingParams(temperature=0, max_tokens=max_tokens)
    ):
        tokens += chunk.tokens
        if chunk.tokens and not first:
            first = time.perf_counter() - start
    return Run(tokens, time.perf_counter() - start, [first])


async def compare_engines(max_tokens: int) -> dict[str, Any]:
    from genmesh.ttt.llama_engine import LlamaCppEngine
    from genmesh.ttt.onnx_engine import OnnxGenAIEngine
    from genmesh.ttt.transformers_engine import TransformersEngine

    engines: dict[str, TextEngine] = {
        "llama.cpp (GGUF Q4_1)": LlamaCppEngine(default_gguf(), threads=THREADS),
        "onnxruntime-genai (int4)": OnnxGenAIEngine(derived_model("onnx")),
        "transformers (fp32)": TransformersEngine(derived_model("hf"), threads=THREADS),
    }
    figures: dict[str, Any] = {}
    for name, engine in engines.items():
        await engine.load()
        await engine_run(engine, 8)  # warm-up
        best = max(
            [await engine_run(engine, max_tokens) for _ in range(2)], key=lambda r: r.tokens_per_s
        )
        figures[name] = {
            "tokens_per_s": round(best.tokens_per_s, 1),
            "ttft_ms": round(best.ttft_p50_ms, 1),
        }
        print(
            f"  {name:28s} {best.tokens_per_s:7.1f} tok/s  ttft {best.ttft_p50_ms:7.1f} ms",
            flush=True,
        )
        await engine.unload()
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--engines", action="store_true", help="also compare CPU engines")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    from llama_cpp import Llama

    model = {
        "name": "smollm2",
        "engine": "llama.cpp",
        "options": {"threads": THREADS, "context_size": 2048},
        "queue_size": 64,
    }
    ttt = ServiceProcess("ttt", {"models": [model]})
    binding = {"name": "smollm2", "tasks": ["text"], "addresses": [ttt.address], "model": "smollm2"}
    router = ServiceProcess("router", router_config([binding]))
    llm = Llama(
        model_path=str(default_gguf()),
        n_ctx=2048,
        n_threads=THREADS,
        n_threads_batch=THREADS,
        verbose=False,
    )
    report: dict[str, Any] = {"model": default_gguf().name, "threads": THREADS, "streams": {}}
    try:
        async with Client(router.address, API_KEY) as client:
            await mesh_run(client, 1, 8)  # warm-up both sides
            inprocess_run(llm, 1, 8)
            print(
                f"{'streams':>7} {'mesh tok/s':>11} {'in-proc tok/s':>14} {'ratio':>6} "
                f"{'mesh ttft ms':>13} {'in-proc ttft ms':>16}"
            )
            for streams in args.streams:
                mesh: list[Run] = []
                local: list[Run] = []
                for _ in range(args.rounds):
                    mesh.append(await mesh_run(client, streams, args.max_tokens))
                    local.append(
                        await asyncio.to_thread(inprocess_run, llm, streams, args.max_tokens)
                    )
                m = max(mesh, key=lambda r: r.tokens_per_s)
                p = max(local, key=lambda r: r.tokens_per_s)
                ratio = m.tokens_per_s / p.tokens_per_s
                print(
                    f"{streams:>7} {m.tokens_per_s:>11.1f} {p.tokens_per_s:>14.1f} {ratio:>6.2f} "
                    f"{m.ttft_p50_ms:>13.1f} {p.ttft_p50_ms:>16.1f}",
                    flush=True,
                )
                report["streams"][streams] = {
                    "mesh_tokens_per_s": round(m.tokens_per_s, 1),
                    "inprocess_tokens_per_s": round(p.tokens_per_s, 1),
                    "ratio": round(ratio, 3),
                    "mesh_ttft_p50_ms": round(m.ttft_p50_ms, 1),
                    "inprocess_ttft_p50_ms": round(p.ttft_p50_ms, 1),
                    "target_met": ratio >= TARGET,
                }
    finally:
        router.terminate()
        ttt.terminate()
        llm.close()
    if args.engines:
        print("CPU engines in-process, one stream:")
        report["engines"] = await compare_engines(args.max_tokens)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
