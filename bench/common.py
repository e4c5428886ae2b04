"""What the benchmark scripts share: latency statistics and the `--json` command line that
`report.py` relies on. Standard library only: `sandbox.py` also imports it under an earlier
genmesh tree's interpreter."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Results = dict[str, Any]


@dataclass
class Streams:
    """What concurrent generations produced: tokens in all, the wall time they took together,
    and each one's time to its first token."""

    tokens: int
    wall_s: float
    first_token_s: list[float]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    @property
    def ttft_ms(self) -> float:
        return statistics.median(self.first_token_s) * 1e3


def timed(call: Callable[[], object], count: int) -> list[float]:
    """The seconds each of `count` calls took."""
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def percentile(samples: list[float], q: float) -> float:
    """Nearest rank: always a latency that was measured, never an interpolation."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarise(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(samples, 0.50) * 1e3,
        "p90_ms": percentile(samples, 0.90) * 1e3,
        "p99_ms": percentile(samples, 0.99) * 1e3,
        "mean_ms": statistics.fmean(samples) * 1e3,
        "req_per_s": len(samples) / sum(samples),
    }


def command_line(doc: str | None) -> argparse.ArgumentParser:
    """A script's parser: the first line of its docstring, and `--json`, with which `report.py`
    asks every benchmark for its results."""
    parser = argparse.ArgumentParser(description=(doc or "").partition("\n")[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    return parser


def service_options(parser: argparse.ArgumentParser, what: str, api_key: str, runs: int) -> None:
    """`--address` and `--api-key` of a running `what` to measure instead of the one the script
    starts, and `--runs`."""
    parser.add_argument("--address", help=f"a running {what} (default: start one)")
    parser.add_argument("--api-key", default=api_key, help="its key")
    parser.add_argument("--runs", type=int, default=runs)


def emit(results: Results, as_json: bool, report: Callable[[Results], None]) -> None:
    """The results as one JSON object, or as the script's own report for a reader."""
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        report(results)
