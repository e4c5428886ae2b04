"""Runs every benchmark in bench/ and writes one report: markdown tables and PNG plots.

Each benchmark runs as its own process, one after the other, so they do not compete for the
machine. A benchmark that prints JSON with `--json` gets tables and plots; the output of any
other is kept as text. Every ratio (a key containing "ratio" or "_over_", or a `ratios` table)
is gathered into one table so they can be read side by side, with the machine described above
them: the figures only mean something next to the hardware and load they ran on.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# This script and the helpers the benchmarks share.
NOT_BENCHMARKS = frozenset({"report", "common"})
DEFAULT_OUT = ROOT / ".cache" / "bench-report"


@dataclass
class Run:
    name: str
    title: str
    seconds: float
    returncode: int
    results: dict[str, Any] | None
    text: str
    plots: list[str] = field(default_factory=list)


def title_of(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text()))
    return doc.splitlines()[0] if doc else path.stem


def run_benchmark(path: Path, timeout: float) -> Run:
    """Runs one benchmark, asking for JSON first and falling back to its plain output."""
    started = time.monotonic()
    command = [sys.executable, str(path)]
    options: dict[str, Any] = {"capture_output": True, "text": True, "timeout": timeout}
    process = subprocess.run([*command, "--json"], check=False, cwd=ROOT, **options)
    if process.returncode == 2 and "unrecognized arguments" in process.stderr:
        process = subprocess.run(command, check=False, cwd=ROOT, **options)
    results: dict[str, Any] | None = None
    start = process.stdout.find("{")
    if start >= 0:
        try:
            parsed = json.loads(process.stdout[start:])
            results = parsed if isinstance(parsed, dict) else None
        except ValueError:
            results = None
    text = process.stdout if results is None else ""
    if process.returncode:
        text += process.stderr[-4000:]
    return Run(
        path.stem, title_of(path), time.monotonic() - started, process.returncode, results, text
    )


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested results as dotted keys."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def is_ratio(key: str) -> bool:
    leaf = key.rsplit(".", 1)[-1]
    return key.startswith("ratios.") or "ratio" in leaf or "_over_" in leaf


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, list):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def machine() -> list[tuple[str, str]]:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    cpu = models[0] if models else platform.processor()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("os", f"{platform.system()} {platform.release()} ({platform.machine()})"),
        ("cpu", f"{cpu}; {psutil.cpu_count(logical=False)} cores, {os.cpu_count()} threads"),
        ("memory", f"{psutil.virtual_memory().total / 2**30:.1f} GiB"),
        ("python", platform.python_version()),
        ("grpcio", metadata.version("grpcio")),
        ("load average at start (1, 5, 15 min)", load),
    ]


def plot(run: Run, out: Path) -> None:
    """Bar charts of a benchmark's latencies (ms) and rates (per second)."""
    flat = flatten(run.results or {})
    groups = {
        "latency (ms)": {k: v for k, v in flat.items() if k.endswith("_ms") and number(v)},
        "rate (per second)": {k: v for k, v in flat.items() if "per_s" in k and number(v)},
    }
    for label, values in groups.items():
        if not values:
            continue
        fig, axis = plt.subplots(figsize=(8, 0.4 * len(values) + 1.2))
        widths = [float(v) for v in values.values()]
        axis.barh(list(values), widths, color="#4c72b0")
        positive = [w for w in widths if w > 0]
        if positive and max(positive) > 100 * min(positive):
            axis.set_xscale("log")  # e.g. sub-millisecond figures next to one-second ones
        axis.invert_yaxis()
        axis.set_xlabel(label)
        axis.set_title(f"{run.name}: {label}")
        fig.tight_layout()
        name = f"{run.name}-{label.split()[0]}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        run.plots.append(name)


def plot_ratios(ratios: list[tuple[str, str, float]], out: Path) -> str | None:
    if not ratios:
        return None
    labels = [f"{bench}: {key}" for bench, key, _ in ratios]
    fig, axis = plt.subplots(figsize=(9, 0.4 * len(ratios) + 1.2))
    axis.barh(labels, [v for _, _, v in ratios], color="#55a868")
    axis.axvline(1.0, color="black", linewidth=0.8)
    axis.invert_yaxis()
    axis.set_xlabel("ratio (1.0 = parity)")
    axis.set_title("Ratios, side by side in one run")
    fig.tight_layout()
    fig.savefig(out / "ratios.png", dpi=110)
    plt.close(fig)
    return "ratios.png"


def write_report(runs: list[Run], described: list[tuple[str, str]], out: Path) -> Path:
    ratios: list[tuple[str, str, float]] = []
    for run in runs:
        for key, value in flatten(run.results or {}).items():
            if is_ratio(key) and (ratio := number(value)) is not None:
                ratios.append((run.name, key.removeprefix("ratios."), ratio))
    lines = ["# genmesh benchmark report", "", "## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in described]
    lines += ["", "## Ratios", ""]
    if ratios:
        lines += ["| benchmark | ratio | value | target |", "|---|---|---:|---|"]
        for bench, key, value in ratios:
            run = next(r for r in runs if r.name == bench)
            target = flatten((run.results or {}).get("targets", {})).get(key, "")
            lines.append(f"| {bench} | {key} | {value:.2f} | {target} |")
        if (chart := plot_ratios(ratios, out)) is not None:
            lines += ["", f"![ratios]({chart})"]
    else:
        lines.append("No benchmark reported a ratio.")
    for run in runs:
        status = "ok" if run.returncode == 0 else f"exit code {run.returncode}"
        lines += ["", f"## {run.name}: {run.title}", "", f"{run.seconds:.0f} s, {status}.", ""]
        if run.results is not None:
            lines += ["| figure | value |", "|---|---:|"]
            lines += [f"| {k} | {fmt(v)} |" for k, v in flatten(run.results).items()]
            lines += [f"\n![{name}]({name})" for name in run.plots]
        if run.text.strip():
            lines += ["```", run.text.strip(), "```"]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(
        json.dumps(
            {"machine": dict(described), "runs": [r.__dict__ for r in runs]}, indent=2, default=str
        )
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="benchmark names (file stems) to run")
    parser.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT, help="report folder")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per benchmark")
    args = parser.parse_args()
    paths = sorted(p for p in BENCH.glob("*.py") if p.stem not in NOT_BENCHMARKS)
    if args.only:
        paths = [p for p in paths if p.stem in args.only]
    args.out.mkdir(parents=True, exist_ok=True)
    described = machine()
    runs = []
    for path in paths:
        print(f"running {path.name} ...", flush=True)
        try:
            run = run_benchmark(path, args.timeout)
        except subprocess.TimeoutExpired:
            run = Run(path.stem, title_of(path), args.timeout, -1, None, "timed out")
        plot(run, args.out)
        runs.append(run)
        print(f"  {run.seconds:.0f} s, exit code {run.returncode}", flush=True)
    print(f"report: {write_report(runs, described, args.out)}")


if __name__ == "__main__":
    main()
