"""ghz against the router: its unary Generate and server-streaming GenerateStream under load.

ghz (built by scripts/ghz.sh from the Go module proxy) is a load tool in Go, so the client's own
cost is not Python's. It reads the methods from a protoset written from genmesh's own
descriptors (ghz's reflection client asks for methods by symbol, which Python's reflection
service does not resolve) and sends the key in metadata. The router fronts a ttt service with
the echo engine (every request gets a slot), so the figures are the mesh's own overhead: the
router hop, the relay and the service's admission, not a model. For each RPC and concurrency it
reports requests/s, latency percentiles and the status codes, summarised from ghz's JSON report.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from google.protobuf import descriptor_pb2, json_format
from google.protobuf.descriptor import FileDescriptor

from bench.common import command_line, emit
from genmesh.client import text_request
from genmesh.v1 import common_pb2, generation_pb2
from tests.load.conftest import LOAD_TTT
from tests.support import API_KEY, ServiceProcess, echo_binding, router_config

SERVICE = "genmesh.v1.GenerationService"
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ghz.sh"


def ghz_binary() -> str:
    built = subprocess.run([str(SCRIPT)], check=True, capture_output=True, text=True)
    return built.stdout.strip().splitlines()[-1]


def write_protoset(path: Path) -> Path:
    """generation.proto and everything it imports, dependencies first, as ghz reads them."""
    files: list[descriptor_pb2.FileDescriptorProto] = []
    seen: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        files.append(proto)

    add(generation_pb2.DESCRIPTOR)
    path.write_bytes(descriptor_pb2.FileDescriptorSet(file=files).SerializeToString())
    return path


def payloads(tokens: int) -> dict[str, str]:
    """Each RPC's request as the JSON ghz sends."""
    parameters = common_pb2.TextParameters(max_tokens=tokens)
    request = text_request("ghz " * tokens, binding="echo", parameters=parameters)
    stream = generation_pb2.GenerateStreamRequest(request=request)
    return {
        "Generate": json_format.MessageToJson(request, preserving_proto_field_name=True),
        "GenerateStream": json_format.MessageToJson(stream, preserving_proto_field_name=True),
    }


def load(
    ghz: list[str], address: str, rpc: str, data: str, concurrency: int, seconds: float
) -> Any:
    run = subprocess.run(
        [
            *ghz,
            f"--call={SERVICE}/{rpc}",
            f"--data={data}",
            f"--metadata={json.dumps({'x-api-key': API_KEY})}",
            f"--concurrency={concurrency}",
            f"--connections={min(concurrency, 4)}",
            f"--duration={seconds}s",
            "--duration-stop=wait",  # in-flight calls finish, rather than count as errors
            "--format=json",
            address,
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        raise RuntimeError(f"ghz failed on {rpc}: {run.stderr.strip()}")
    return json.loads(run.stdout)


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """What a reader needs of ghz's report: throughput, latency percentiles, outcomes."""
    percentiles = {
        f"p{p['percentage']}_ms": p["latency"] / 1e6
        for p in report.get("latencyDistribution") or []
        if p["percentage"] in (50, 90, 99)
    }
    return {
        "requests": report["count"],
        "requests_per_s": report["rps"],
        "mean_ms": report["average"] / 1e6,
        **percentiles,
        "statuses": report.get("statusCodeDistribution", {}),
        "errors": report.get("errorDistribution") or {},
    }


def measure(args: Any) -> dict[str, Any]:
    protoset = write_protoset(Path(tempfile.mkdtemp(prefix="ghz-")) / "genmesh.protoset")
    ghz = [ghz_binary(), "--insecure", f"--protoset={protoset}"]
    ttt = ServiceProcess("ttt", LOAD_TTT)
    router = ServiceProcess("router", router_config([echo_binding(ttt.address)]))
    results: dict[str, Any] = {"seconds": args.seconds, "tokens": args.tokens, "runs": {}}
    try:
        for rpc, data in payloads(args.tokens).items():
            load(ghz, router.address, rpc, data, 4, 1)  # warm-up: connections
            for concurrency in args.concurrency:
                report = load(ghz, router.address, rpc, data, concurrency, args.seconds)
                results["runs"][f"{rpc}_c{concurrency}"] = summary(report)
    finally:
        router.terminate()
        ttt.terminate()
    return results


def report(results: dict[str, Any]) -> None:
    print(
        f"ghz, {results['seconds']:g} s a run, echo of {results['tokens']} tokens, "
        "through the router"
    )
    print(f"{'run':<22}{'req/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}  statuses")
    for name, run in results["runs"].items():
        print(
            f"{name:<22}{run['requests_per_s']:>9.0f}{run.get('p50_ms', 0):>9.2f}"
            f"{run.get('p90_ms', 0):>9.2f}{run.get('p99_ms', 0):>9.2f}  {run['statuses']}"
        )
        for error, count in run["errors"].items():
            print(f"  {count} x {error}")


def main() -> None:
    parser = command_line(__doc__)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--tokens", type=int, default=16, help="tokens the echo engine returns")
    args = parser.parse_args()
    emit(measure(args), args.json, report)


if __name__ == "__main__":
    main()
