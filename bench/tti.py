"""tti on CPU: seconds per image at 20 steps, two concurrent requests against the queue, and
the embedded model's prompt adherence.

Starts a tti service with the embedded model (one run at a time, the default) and measures:
- sequential: wall seconds per image for single-image requests at 20 steps;
- concurrent: two requests sent together; the second waits in the queue, so its total is about
  twice the first's and its reported queue time about one run. Wall time for both is compared
  with two sequential runs;
- adherence: colour, background, shape and quadrant accuracy on held-out prompts.

    python bench/tti.py [--runs N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genmesh.runtime.channel import key_interceptors
from genmesh.tti import shapes
from genmesh.v1 import common_pb2, inference_pb2_grpc
from tests.support import INTERNAL_KEY, ServiceProcess
from tests.tti.conftest import final, images, infer, request

PROMPT = "a small yellow triangle at the bottom right on a purple background"


def seconds(duration: Any) -> float:
    return float(duration.seconds + duration.nanos / 1e9)


async def measure(address: str, runs: int) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(
        address, interceptors=key_interceptors(INTERNAL_KEY)
    ) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        await infer(stub, request(PROMPT, steps=2, seed=0))  # warm-up
        per_image = []
        for run in range(runs):
            started = time.perf_counter()
            await infer(stub, request(PROMPT, steps=20, seed=run))
            per_image.append(time.perf_counter() - started)
        started = time.perf_counter()
        pair = await asyncio.gather(
            *(infer(stub, request(PROMPT, steps=20, seed=s)) for s in (1, 2))
        )
        both = time.perf_counter() - started
        timings: list[common_pb2.Timings] = [final(events).timings for events in pair]
        pairs = []
        for index, scene in enumerate(shapes.evaluation_scenes(24)):
            req = request(scene.caption, steps=20, seed=1000 + 10 * index, count=2)
            pairs += [(scene, shapes.measure(image)) for image in images(await infer(stub, req))]
    return {
        "seconds_per_image_20_steps": {
            "median": statistics.median(per_image),
            "min": min(per_image),
            "runs": runs,
        },
        "two_concurrent": {
            "wall_seconds": both,
            "wall_ratio_vs_two_sequential": both / (2 * statistics.median(per_image)),
            "queue_seconds": sorted(seconds(t.queue) for t in timings),
            "total_seconds": sorted(seconds(t.total) for t in timings),
        },
        "adherence_held_out": {"images": len(pairs), **shapes.adherence(pairs)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    service = ServiceProcess("tti", {})
    try:
        report = asyncio.run(measure(service.address, args.runs))
    finally:
        service.terminate()
    print(json.dumps(report, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
