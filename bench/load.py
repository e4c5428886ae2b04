"""Load: 256 concurrent streams through one router with the echo engine, for 60 seconds.

Reports requests and chunks per second, errors, and the router's resident memory before, at
its peak and after (DESIGN.md section 4: no errors, bounded memory). The same driver runs a
shorter version in tests/load.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import command_line, emit
from tests.load.conftest import LOAD_TTT
from tests.load.driver import run_streams
from tests.support import ServiceProcess, echo_binding, router_config


async def measure(streams: int, seconds: float, delay_ms: int) -> dict[str, Any]:
    ttt = ServiceProcess("ttt", LOAD_TTT)
    router = ServiceProcess("router", router_config([echo_binding(ttt.address)]))
    try:
        warm = await run_streams(router.address, router.popen.pid, 16, 2, delay_ms=delay_ms)
        result = await run_streams(
            router.address, router.popen.pid, streams, seconds, delay_ms=delay_ms
        )
    finally:
        router.terminate()
        ttt.terminate()
    return {
        "streams": streams,
        "seconds": seconds,
        "delay_ms_per_token": delay_ms,
        "requests": result.requests,
        "requests_per_s": result.requests / seconds,
        "chunks_per_s": result.chunks / seconds,
        "errors": len(result.errors),
        "error_samples": sorted(set(result.errors))[:5],
        "router_rss_mb": {
            "before": warm.rss_after_mb,
            "peak": result.rss_peak_mb,
            "after": result.rss_after_mb,
        },
    }


def report(results: dict[str, Any]) -> None:
    rss = results["router_rss_mb"]
    print(
        f"{results['streams']} streams for {results['seconds']:.0f} s: "
        f"{results['requests']} requests ({results['requests_per_s']:.1f}/s), "
        f"{results['chunks_per_s']:.0f} chunks/s, {results['errors']} errors"
    )
    print(
        f"router RSS: {rss['before']:.1f} MB before, {rss['peak']:.1f} MB peak, "
        f"{rss['after']:.1f} MB after"
    )
    for sample in results["error_samples"]:
        print(f"  error: {sample}")


def main() -> None:
    parser = command_line(__doc__)
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--delay-ms", type=int, default=10, help="echo engine pace per token")
    args = parser.parse_args()
    results = asyncio.run(measure(args.streams, args.seconds, args.delay_ms))
    emit(results, args.json, report)


if __name__ == "__main__":
    main()
