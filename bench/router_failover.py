"""Router failover and admission: how fast a dead replica leaves the rotation, and what a queue
costs.

Measures, in one run, with two echo ttt replicas behind one binding:
- after a replica is killed (SIGKILL), the time until the router lists it
  unhealthy (ListBindings), while unary requests run back to back: a request sent to a dead
  replica before that is retried on the other one, so none should fail;
- unary latency through a binding with a free slot, and the queue time reported when every
  request must wait for one slot (max_concurrent 1).

Target (issue 5): a replica that goes down stops receiving new requests within a second.
A replica that hangs with its connection open is not covered: a late health check over a live
connection counts as busy, not down (see backends.py).
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import sys
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genmesh.client import Client, text_request
from tests.support import API_KEY, ServiceProcess, router_config

KILLS = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def replica(name: str, port: int) -> ServiceProcess:
    return ServiceProcess("ttt", {"port": port, "models": [{"name": name, "engine": "echo"}]})


def report(what: str, samples: list[float]) -> None:
    print(
        f"{what:40s} median {statistics.median(samples) * 1e3:6.1f} ms"
        f"  max {max(samples) * 1e3:6.1f} ms  (n={len(samples)})"
    )


async def healthy(client: Client) -> int:
    return (await client.list_bindings())[0].healthy_replicas


async def until_healthy(client: Client, count: int, since: float) -> float:
    """Seconds from `since` until the router lists `count` healthy replicas (polled)."""
    while True:
        if await healthy(client) == count:
            return time.monotonic() - since
        await asyncio.sleep(0.002)


async def traffic(client: Client, stop: asyncio.Event) -> tuple[int, int]:
    """Unary requests back to back until `stop`: (answered, failed)."""
    answered = failed = 0
    while not stop.is_set():
        try:
            await client.generate(text_request("x"))
            answered += 1
        except grpc.aio.AioRpcError:
            failed += 1
    return answered, failed


async def main() -> None:
    port = free_port()
    a, b = replica("echo-a", port), replica("echo-b", 0)
    binding = {"name": "pair", "tasks": ["text"], "addresses": [a.address, b.address]}
    narrow = {"name": "narrow", "tasks": ["text"], "addresses": [b.address], "max_concurrent": 1}
    router = ServiceProcess("router", router_config([binding, narrow]))
    marks: list[float] = []
    try:
        async with Client(router.address, API_KEY) as client:
            stop = asyncio.Event()
            load = asyncio.ensure_future(traffic(client, stop))
            for _ in range(KILLS):
                await until_healthy(client, 2, time.monotonic())
                killed = time.monotonic()
                a.popen.kill()
                marks.append(await until_healthy(client, 1, killed))
                a.popen.wait()
                a = replica("echo-a", port)
            stop.set()
            answered, failed = await load
            report("replica killed (SIGKILL) -> unhealthy", marks)
            print(f"requests during the kills: {answered} answered, {failed} failed")

            free = [await client.generate(text_request("q", binding="narrow")) for _ in range(50)]
            total = statistics.median(r.timings.total.ToNanoseconds() for r in free) / 1e6
            print(f"narrow binding, one at a time:     median total {total:6.2f} ms")
            crowd = await asyncio.gather(
                *(client.generate(text_request("q" * 20, binding="narrow")) for _ in range(20))
            )
            queued = sorted(r.timings.queue.ToNanoseconds() / 1e6 for r in crowd)
            print(
                f"20 at once on 1 slot:              queue median {statistics.median(queued):6.2f}"
                f" ms  max {queued[-1]:6.2f} ms"
            )
    finally:
        router.terminate()
        a.terminate()
        b.terminate()


if __name__ == "__main__":
    asyncio.run(main())
