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

`--against REV` instead compares the llama.cpp engine alone (no service, no router) with the
engine of git revision REV (its `services/ttt/llama_engine.py` loaded from a temporary folder),
side by side in one run: aggregate tokens/s and median time to first token at each stream count,
distinct prompts per stream, sampled with a seed per stream.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Streams
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


async def mesh_run(client: Client, streams: int, max_tokens: int) -> Streams:
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
    return Streams(sum(t for t, _ in results), wall, [f for _, f in results])


def inprocess_run(llm: Any, streams: int, max_tokens: int) -> Streams:
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
    return Streams(tokens, time.perf_counter() - start, firsts)


async def engine_run(engine: TextEngine, max_tokens: int) -> Streams:
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
    return Streams(tokens, time.perf_counter() - start, [first])


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
            "ttft_ms": round(best.ttft_ms, 1),
        }
        print(
            f"  {name:28s} {best.tokens_per_s:7.1f} tok/s  ttft {best.ttft_ms:7.1f} ms",
            flush=True,
        )
        await engine.unload()
    return figures


def engine_at(rev: str) -> Any:
    """The llama.cpp engine class of git revision `rev`."""
    source = subprocess.run(
        ["git", "show", f"{rev}:services/ttt/llama_engine.py"],
        cwd=Path(__file__).resolve().parents[1],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "llama_engine.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("genmesh.ttt.baseline_llama_engine", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LlamaCppEngine


async def engine_streams(engine: TextEngine, streams: int, max_tokens: int) -> Streams:
    start = time.perf_counter()

    async def one(index: int) -> tuple[int, float]:
        messages = [ChatMessage("system", SYSTEM), ChatMessage("user", f"{PROMPT} ({index})")]
        params = SamplingParams(temperature=0.8, seed=index, max_tokens=max_tokens)
        first, tokens = 0.0, 0
        async for chunk in engine.generate(messages, params):
            tokens += chunk.tokens
            if chunk.tokens and not first:
                first = time.perf_counter() - start
        return tokens, first

    results = await asyncio.gather(*(one(i) for i in range(streams)))
    wall = time.perf_counter() - start
    return Streams(sum(t for t, _ in results), wall, [f for _, f in results])


async def compare_revisions(args: argparse.Namespace) -> dict[str, Any]:
    from genmesh.ttt.llama_engine import LlamaCppEngine

    slots = max(args.streams)
    engines: dict[str, TextEngine] = {
        args.against: engine_at(args.against)(
            default_gguf(), context_size=1024, threads=args.threads
        ),
        "this tree": LlamaCppEngine(
            default_gguf(), context_size=1024, threads=args.threads, slots=slots
        ),
    }
    for engine in engines.values():
        await engine.load()
        await engine_streams(engine, 1, 8)  # warm-up
    print(f"threads {args.threads}; {'streams':>7} " + " ".join(f"{n:>28}" for n in engines))
    figures: dict[str, Any] = {}
    for streams in args.streams:
        runs: dict[str, list[Streams]] = {name: [] for name in engines}
        for _ in range(args.rounds):  # interleaved, so load drift hits both alike
            for name, engine in engines.items():
                runs[name].append(await engine_streams(engine, streams, args.max_tokens))
        row = {}
        for name, got in runs.items():
            row[name] = {
                "tokens_per_s": round(statistics.median(r.tokens_per_s for r in got), 1),
                "ttft_p50_ms": round(statistics.median(r.ttft_ms for r in got), 1),
            }
        figures[str(streams)] = row
        cells = " ".join(
            f"{f['tokens_per_s']:>9.1f} tok/s {f['ttft_p50_ms']:>8.0f} ms ttft"
            for f in row.values()
        )
        print(f"{'':12}{streams:>7} {cells}", flush=True)
    for engine in engines.values():
        await engine.unload()
    return {"threads": args.threads, "against": args.against, "streams": figures}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--engines", action="store_true", help="also compare CPU engines")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--against", metavar="REV", help="engine alone against git revision REV")
    parser.add_argument("--threads", type=int, default=THREADS, help="llama.cpp threads")
    args = parser.parse_args()
    if args.against:
        figures = await compare_revisions(args)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
        return

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
                mesh: list[Streams] = []
                local: list[Streams] = []
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
                    f"{m.ttft_ms:>13.1f} {p.ttft_ms:>16.1f}",
                    flush=True,
                )
                report["streams"][streams] = {
                    "mesh_tokens_per_s": round(m.tokens_per_s, 1),
                    "inprocess_tokens_per_s": round(p.tokens_per_s, 1),
                    "ratio": round(ratio, 3),
                    "mesh_ttft_p50_ms": round(m.ttft_ms, 1),
                    "inprocess_ttft_p50_ms": round(p.ttft_ms, 1),
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
