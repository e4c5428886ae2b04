"""SIGTERM to a router under traffic: the streams in flight finish whole, new requests are
refused with UNAVAILABLE (never left hanging), and the router exits cleanly."""

from __future__ import annotations

import asyncio
import signal

import grpc

from tests.faults.conftest import generate, read_text, slow, stream
from tests.support import ServiceProcess, echo_binding, router_config

IN_FLIGHT = 4
CHARS = 60


async def test_sigterm_drains_in_flight_and_refuses_new(ttt: ServiceProcess) -> None:
    router = ServiceProcess(
        "router", router_config([echo_binding(ttt.address)], shutdown_grace_seconds=30)
    )
    try:
        async with grpc.aio.insecure_channel(router.address) as channel:
            calls = [stream(channel, slow(CHARS, 25)) for _ in range(IN_FLIGHT)]
            firsts = [(await anext(aiter(call))).event.text_delta.text for call in calls]
            rests = [asyncio.ensure_future(read_text(call)) for call in calls]
            router.popen.send_signal(signal.SIGTERM)

            refused: grpc.aio.AioRpcError | None = None
            async with grpc.aio.insecure_channel(router.address) as fresh:
                for _ in range(200):
                    try:
                        await generate(fresh, "late")
                    except grpc.aio.AioRpcError as error:
                        refused = error
                        break
                    await asyncio.sleep(0.02)
            assert refused is not None and refused.code() == grpc.StatusCode.UNAVAILABLE

            texts = [
                first + rest
                for first, rest in zip(firsts, await asyncio.gather(*rests), strict=True)
            ]
            assert texts == ["x" * CHARS] * IN_FLIGHT
        assert await asyncio.to_thread(router.popen.wait, 60) == 0
        assert router.events("stopped")
    finally:
        router.terminate()
