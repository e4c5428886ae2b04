"""Random bytes thrown at every port of the mesh (gRPC, metrics, the gateway's HTTP): every
process stays up, healthy and serving."""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.faults.conftest import generate
from tests.gateway.process import GatewayProcess
from tests.support import ServiceProcess, echo_binding, router_config
from tests.telemetry.conftest import metrics_port, scrape

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def payloads(seed: int) -> Iterator[bytes]:
    """Garbage of many sizes, alone and after a valid HTTP/2 preface or an HTTP request line."""
    rng = random.Random(seed)
    for size in (1, 9, 64, 1024, 65536, 1 << 19):
        noise = rng.randbytes(size)
        yield noise
        yield HTTP2_PREFACE + noise
        yield b"POST /v1/generate HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n" + noise


def throw(port: int, data: bytes) -> None:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.settimeout(0.5)
        sock.sendall(data)
        with contextlib.suppress(OSError):
            sock.recv(65536)


async def serving(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        response = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


async def test_garbage_on_every_port_crashes_nothing() -> None:
    ttt = ServiceProcess("ttt", {"metrics_port": 0})
    sandbox = ServiceProcess("sandbox", {"metrics_port": 0})
    router = ServiceProcess(
        "router",
        router_config([echo_binding(ttt.address)], sandbox_address=sandbox.address, metrics_port=0),
    )
    gateway = GatewayProcess(router.address)
    services = (ttt, sandbox, router)
    try:
        ports = [p.port for p in services] + [metrics_port(p) for p in services] + [gateway.port]
        for seed, port in enumerate(ports):
            for data in payloads(seed):
                throw(port, data)

        for process in services:
            assert process.popen.poll() is None, process.logs()
            assert await serving(process.address)
            assert scrape(process)
        assert gateway.popen.poll() is None
        async with grpc.aio.insecure_channel(router.address) as channel:
            assert await generate(channel, "unshaken") == "unshaken"
    finally:
        gateway.terminate()
        for process in (router, sandbox, ttt):
            process.terminate()
