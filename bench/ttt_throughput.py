"""Text generation throughput: genmesh through the router against llama.cpp's own llama-server.

For each thread count and each number of concurrent streams N (1, 4, 8, 16 by default) it starts
a ttt service (llama.cpp engine, embedded SmolLM2 Q4_1, N batching slots) behind a router, and
`llama-server --parallel N` on the same GGUF, built by `scripts/build_llama_server.sh` from the
llama.cpp source of the same version as the llama-cpp-python wheel. It runs N streams on each,
side by side in alternating order round after round so drift in the machine's load hits both
alike, and reports medians over the rounds:
- tokens/s: all completion tokens over the wall time of the N streams;
- time to first token: from the streams' start to each stream's first token (median of N).

Same work on both sides: the same chat messages (the GGUF's chat template), greedy with the same
repeat penalty, the same max_tokens; each stream's prompt is distinct, and both servers reuse the
prefix the prompts share from a slot's cache, as they do by default. Completion tokens are counted
as each server reports them (a stream may end at EOS before max_tokens; the tokens per stream are
printed). Targets (issue 22): at 8 streams genmesh >= 1.0x llama-server's tokens/s, at 1 stream
>= 0.95x; time to first token <= 1.2x llama-server's (+ 10 ms at 1 stream).

`--shared-prefix` gives every request a ~500-token system prompt and runs genmesh without
prefix reuse beside the two: what reusing the cached prefix saves in time to first token.

`--engines` instead times each CPU engine in-process on one stream (which one is fastest here).

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
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Results, Streams, command_line, emit
from genmesh.client import Client, text_request
from genmesh.ttt.batching import PENALTY_LAST_N
from genmesh.ttt.engine import ChatMessage, SamplingParams, TextEngine
from genmesh.ttt.llama_engine import default_threads
from genmesh.ttt.models import default_gguf, derived_model
from genmesh.v1 import common_pb2
from tests.support import API_KEY, ServiceProcess, router_config

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = "You are a helpful assistant."
# ~500 tokens that every request starts with under --shared-prefix, as a long personality would.
LONG_SYSTEM = "You are the assistant of a bakery. " + " ".join(
    f"Rule {i}: answer questions about bread number {i} politely, briefly and accurately."
    for i in range(27)
)
PROMPT = "Write a short essay about the history of bread."
# Tokens of context per slot, on both sides.
CONTEXT = 1024
THREADS = default_threads()
# Starts one stream (its index) at the batch's start time; gives its tokens and first-token time.
Stream = Callable[[int, float], Awaitable[tuple[int, float]]]
# Runs one stream per prompt at once, at most `max_tokens` each.
Server = Callable[[list[str], int], Awaitable[Streams]]


async def concurrently(count: int, stream: Stream) -> Streams:
    start = time.perf_counter()
    results = await asyncio.gather(*(stream(i, start) for i in range(count)))
    wall = time.perf_counter() - start
    return Streams(sum(t for t, _ in results), wall, [f for _, f in results])


def prompts(count: int, round_: int) -> list[str]:
    """Distinct per stream and per round: no server answers one from its cache, though they
    share their first tokens (the template and system prompt) as real requests do."""
    return [f"{PROMPT} (Essay {round_}.{i}.)" for i in range(count)]


@asynccontextmanager
async def mesh(threads: int, slots: int, system: str, reuse: bool = True) -> AsyncIterator[Server]:
    """A ttt service with `slots` batching slots behind a router, as `genmesh serve` runs them."""
    options = {"threads": threads, "context_size": CONTEXT, "prefix_reuse": reuse}
    model = {
        "name": "smollm2",
        "engine": "llama.cpp",
        "options": options,
        "concurrency": slots,
        "queue_size": 64,
    }
    with_model = {"models": [model], "embedding_models": []}
    async with AsyncExitStack() as stack:
        ttt = ServiceProcess("ttt", with_model)
        stack.callback(ttt.terminate)
        binding = {"name": "smollm2", "tasks": ["text"], "addresses": [ttt.address]}
        router = ServiceProcess("router", router_config([{**binding, "model": "smollm2"}]))
        stack.callback(router.terminate)
        client = await stack.enter_async_context(Client(router.address, API_KEY))

        async def run(texts: list[str], max_tokens: int) -> Streams:
            params = common_pb2.TextParameters(temperature=0, max_tokens=max_tokens)

            async def one(index: int, start: float) -> tuple[int, float]:
                first, tokens = 0.0, 0
                request = text_request(texts[index], system=system, parameters=params)
                async for event in client.generate_stream(request):
                    if event.HasField("text_delta") and not first:
                        first = time.perf_counter() - start
                    if event.HasField("final"):
                        tokens = event.final.usage.completion_tokens
                return tokens, first

            return await concurrently(len(texts), one)

        yield run


async def until_healthy(http: httpx.AsyncClient, process: asyncio.subprocess.Process) -> None:
    while process.returncode is None:
        try:
            if (await http.get("/health")).status_code == 200:
                return
        except httpx.TransportError:  # not listening yet
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"llama-server exited with {process.returncode}")


async def completion(
    http: httpx.AsyncClient, system: str, text: str, max_tokens: int, start: float
) -> tuple[int, float]:
    """One streamed chat completion: its tokens and the time from `start` to its first."""
    body = {
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}],
        # genmesh's defaults for what the mesh's requests leave unset.
        "temperature": 0,
        "repeat_penalty": SamplingParams.repeat_penalty,
        "repeat_last_n": PENALTY_LAST_N,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    first, tokens = 0.0, 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as reply:
        reply.raise_for_status()
        async for line in reply.aiter_lines():
            if not line.startswith("data: {"):  # blank separators and the closing [DONE]
                continue
            chunk = json.loads(line.removeprefix("data: "))
            if not first and any(c["delta"].get("content") for c in chunk["choices"]):
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return tokens, first


@asynccontextmanager
async def llama_server(binary: str, threads: int, slots: int, system: str) -> AsyncIterator[Server]:
    """`llama-server --parallel slots` on the same GGUF, streaming OpenAI chat completions."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        *(binary, "--model", str(default_gguf()), "--host", "127.0.0.1", "--port", str(port)),
        *("--threads", str(threads), "--threads-batch", str(threads)),
        *("--parallel", str(slots), "--ctx-size", str(slots * CONTEXT), "--jinja", "--no-webui"),
    ]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    # llama-server closes a connection idle for 5 s (while genmesh's turn runs): one reused just
    # as it closes ends the request with "Server disconnected", so idle ones are not kept as long.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None, keepalive_expiry=2)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=600, limits=limits
        ) as http:
            await until_healthy(http, process)

            async def run(texts: list[str], max_tokens: int) -> Streams:
                return await concurrently(
                    len(texts),
                    lambda i, start: completion(http, system, texts[i], max_tokens, start),
                )

            yield run
    finally:
        process.terminate()
        await process.wait()


async def side_by_side(
    servers: dict[str, Server], streams: int, rounds: int, max_tokens: int
) -> dict[str, Any]:
    """`rounds` runs of `streams` streams on each server, taking turns (in alternating order, so
    drift in the machine's load hits all alike): each one's medians, and the first's ratios to
    each other's."""
    for server in servers.values():  # warm-up, every slot
        await server(prompts(streams, -1), 8)
    runs: dict[str, list[Streams]] = {name: [] for name in servers}
    for round_ in range(rounds):
        order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
        for name in order:
            runs[name].append(await servers[name](prompts(streams, round_), max_tokens))
    row: dict[str, Any] = {
        name: {
            "tokens_per_s": round(statistics.median(r.tokens_per_s for r in got), 1),
            "ttft_p50_ms": round(statistics.median(r.ttft_ms for r in got), 1),
            "tokens_per_stream": round(statistics.fmean(r.tokens for r in got) / streams, 1),
        }
        for name, got in runs.items()
    }
    first, *others = servers
    row["ratios"] = {name: ratios(row[first], row[name]) for name in others}
    return row


def ratios(ours: dict[str, float], theirs: dict[str, float]) -> dict[str, float]:
    return {
        "tokens_per_s": round(ours["tokens_per_s"] / theirs["tokens_per_s"], 3),
        "ttft": round(ours["ttft_p50_ms"] / theirs["ttft_p50_ms"], 3),
    }


def build_llama_server() -> str:
    """The llama-server binary's path, built first if it is not in the cache yet."""
    script = ROOT / "scripts" / "build_llama_server.sh"
    return subprocess.run([script], check=True, stdout=subprocess.PIPE, text=True).stdout.strip()


async def against_llama_server(args: argparse.Namespace) -> Results:
    binary = build_llama_server()
    system = LONG_SYSTEM if args.shared_prefix else SYSTEM
    results: Results = {
        "model": default_gguf().name,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "shared_prefix": args.shared_prefix,
        "threads": {},
    }
    for threads in args.threads:
        rows: dict[str, Any] = {}
        for streams in args.streams:
            slots = args.slots or streams
            async with AsyncExitStack() as stack:
                servers = {
                    "genmesh": await stack.enter_async_context(mesh(threads, slots, system)),
                    "llama-server": await stack.enter_async_context(
                        llama_server(binary, threads, slots, system)
                    ),
                }
                if args.shared_prefix:  # the control: the same prompts without reuse
                    servers["genmesh, no reuse"] = await stack.enter_async_context(
                        mesh(threads, slots, system, reuse=False)
                    )
                rows[str(streams)] = await side_by_side(
                    servers, streams, args.rounds, args.max_tokens
                )
            print(f"threads {threads}, {streams} streams: {rows[str(streams)]}", file=sys.stderr)
        results["threads"][str(threads)] = rows
    results["best"] = best_threads(results["threads"], args.streams)
    return results


def best_threads(by_threads: dict[str, Any], streams: list[int]) -> dict[str, Any]:
    """Per stream count, genmesh and llama-server each at its own best thread count (by
    tokens/s), and genmesh's ratios to llama-server there."""
    best: dict[str, Any] = {}
    sides = ("genmesh", "llama-server")
    for count in map(str, streams):
        pick = {
            side: max(by_threads, key=lambda t: by_threads[t][count][side]["tokens_per_s"])
            for side in sides
        }
        ours, theirs = (by_threads[pick[side]][count][side] for side in sides)
        best[count] = {
            "genmesh_threads": int(pick["genmesh"]),
            "llama_server_threads": int(pick["llama-server"]),
            "ratios": ratios(ours, theirs),
        }
    return best


def print_table(results: Results) -> None:
    print(f"{results['model']}, {results['max_tokens']} tokens, medians of {results['rounds']}")
    for threads, rows in results["threads"].items():
        for streams, row in rows.items():
            print(f"{threads} threads, {streams} streams:")
            for name, figures in row.items():
                if name != "ratios":
                    print(
                        f"  {name:18} {figures['tokens_per_s']:7.1f} tok/s "
                        f"{figures['ttft_p50_ms']:7.0f} ms ttft "
                        f"{figures['tokens_per_stream']:5.1f} tokens/stream"
                    )
            for name, ratio in row["ratios"].items():
                print(
                    f"  genmesh / {name}: tokens/s {ratio['tokens_per_s']:.2f}x, "
                    f"ttft {ratio['ttft']:.2f}x"
                )
    print("each at its best thread count:")
    for streams, best in results["best"].items():
        print(
            f"  {streams:>2} streams: genmesh {best['genmesh_threads']} threads, llama-server "
            f"{best['llama_server_threads']}: tokens/s {best['ratios']['tokens_per_s']:.2f}x, "
            f"ttft {best['ratios']['ttft']:.2f}x"
        )


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
            file=sys.stderr,
            flush=True,
        )
        await engine.unload()
    return figures


def engine_at(rev: str) -> Any:
    """The llama.cpp engine class of git revision `rev`."""
    source = subprocess.run(
        ["git", "show", f"{rev}:services/ttt/llama_engine.py"],
        cwd=ROOT,
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


def engine_server(engine: TextEngine) -> Server:
    """The engine alone as a server: each stream sampled with a seed of its own."""

    async def run(texts: list[str], max_tokens: int) -> Streams:
        async def one(index: int, start: float) -> tuple[int, float]:
            messages = [ChatMessage("system", SYSTEM), ChatMessage("user", texts[index])]
            params = SamplingParams(temperature=0.8, seed=index, max_tokens=max_tokens)
            first, tokens = 0.0, 0
            async for chunk in engine.generate(messages, params):
                tokens += chunk.tokens
                if chunk.tokens and not first:
                    first = time.perf_counter() - start
            return tokens, first

        return await concurrently(len(texts), one)

    return run


async def compare_revisions(args: argparse.Namespace) -> Results:
    from genmesh.ttt.llama_engine import LlamaCppEngine

    slots = args.slots or max(args.streams)
    figures: dict[str, Any] = {}
    for threads in args.threads:
        engines: dict[str, TextEngine] = {
            "this tree": LlamaCppEngine(
                default_gguf(), context_size=CONTEXT, threads=threads, slots=slots
            ),
            args.against: engine_at(args.against)(
                default_gguf(), context_size=CONTEXT, threads=threads
            ),
        }
        for engine in engines.values():
            await engine.load()
        servers = {name: engine_server(engine) for name, engine in engines.items()}
        rows: dict[str, Any] = {}
        for streams in args.streams:
            rows[str(streams)] = await side_by_side(servers, streams, args.rounds, args.max_tokens)
            print(f"threads {threads}, {streams} streams: {rows[str(streams)]}", file=sys.stderr)
        for engine in engines.values():
            await engine.unload()
        figures[str(threads)] = rows
    return {"against": args.against, "threads": figures}


async def main() -> None:
    parser = command_line(__doc__)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="llama.cpp threads")
    parser.add_argument(
        "--slots", type=int, default=0, help="batching slots (default: as many as streams)"
    )
    parser.add_argument(
        "--shared-prefix",
        action="store_true",
        help="a ~500-token system prompt, and genmesh without prefix reuse beside",
    )
    parser.add_argument("--engines", action="store_true", help="compare CPU engines instead")
    parser.add_argument("--against", metavar="REV", help="engine alone against git revision REV")
    args = parser.parse_args()
    if args.against:
        emit(await compare_revisions(args), args.json, lambda _: None)
    elif args.engines:
        emit({"engines": await compare_engines(args.max_tokens)}, args.json, lambda _: None)
    else:
        emit(await against_llama_server(args), args.json, print_table)


if __name__ == "__main__":
    asyncio.run(main())
