"""Replicas: round-robin, a replica killed mid-stream, traffic moving to the survivor and back."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator

import grpc
import pytest

from genmesh.client import Client, error_details, text_request
from genmesh.v1 import catalog_pb2, tokenizer_pb2
from tests.router.mesh import eventually, slow
from tests.support import API_KEY, ServiceProcess, router_config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def replica(name: str, port: int = 0) -> ServiceProcess:
    """An echo ttt whose model is named after it, so responses tell which replica served."""
    return ServiceProcess("ttt", {"port": port, "models": [{"name": name, "engine": "echo"}]})


@pytest.fixture
def replicas() -> Iterator[list[ServiceProcess]]:
    started = [replica("echo-a", free_port()), replica("echo-b")]
    yield started
    for process in started:
        process.terminate()


def pair_router(replicas: list[ServiceProcess]) -> ServiceProcess:
    binding = {
        "name": "pair",
        "tasks": ["text"],
        "addresses": [r.address for r in replicas],
        "engine": "echo",
    }
    return ServiceProcess("router", router_config([binding]))


async def healthy_replicas(client: Client) -> int:
    response = await client.catalog.ListBindings(
        catalog_pb2.ListBindingsRequest(), metadata=client.metadata
    )
    return response.bindings[0].healthy_replicas


async def test_kill_a_replica_mid_stream(replicas: list[ServiceProcess]) -> None:
    a = replicas[0]
    router = pair_router(replicas)
    try:
        async with Client(router.address, API_KEY) as client:
            served = [(await client.generate(text_request("hi"))).model for _ in range(4)]
            assert served == ["echo-a", "echo-b", "echo-a", "echo-b"]

            # Round-robin sends this stream to echo-a; kill echo-a once output is flowing.
            events = client.generate_stream(slow("cut", delay_ms=50, repeat=100))
            received = [await anext(events), await anext(events)]
            a.popen.kill()
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                received.extend([event async for event in events])
            details = error_details(cut.value)
            assert details.code == grpc.StatusCode.UNAVAILABLE
            assert details.reason == "STREAM_INTERRUPTED"
            assert details.retry_after is not None
            partial = "".join(e.text_delta.text for e in received)
            assert partial and ("cut" * 100).startswith(partial)
            assert details.metadata["deltas"] == str(len(received))
            assert details.metadata["output_chars"] == str(len(partial))
            assert details.metadata["binding"] == "pair"

            # Every following request goes to the survivor, and succeeds.
            after = [await client.generate(text_request("next")) for _ in range(4)]
            assert {r.model for r in after} == {"echo-b"}
            assert all(r.outputs[0].text == "next" for r in after)

            async def one_healthy() -> bool:
                return await healthy_replicas(client) == 1

            await eventually(one_healthy)

            # Back on its address, echo-a is checked healthy and gets its share again.
            replicas[0] = replica("echo-a", a.port)

            async def both_healthy() -> bool:
                return await healthy_replicas(client) == 2

            await eventually(both_healthy, timeout=60)
            back = {(await client.generate(text_request("hi"))).model for _ in range(4)}
            assert back == {"echo-a", "echo-b"}
    finally:
        router.terminate()


async def test_unary_call_retries_on_the_other_replica(replicas: list[ServiceProcess]) -> None:
    a, _ = replicas
    router = pair_router(replicas)
    try:
        async with Client(router.address, API_KEY) as client:
            a.popen.kill()
            a.popen.wait()
            # Whatever the router's view of echo-a, no call fails: an unavailable replica's
            # call is retried once on the other.
            answers = [await client.generate(text_request("safe")) for _ in range(6)]
            assert {r.model for r in answers} == {"echo-b"}
            count = await client.tokenizer.CountTokens(
                tokenizer_pb2.CountTokensRequest(binding="pair", text="four"),
                metadata=client.metadata,
            )
            assert count.count == 4
    finally:
        router.terminate()


async def test_no_healthy_replica_is_unavailable_with_retry_info(
    replicas: list[ServiceProcess],
) -> None:
    router = pair_router(replicas)
    try:
        async with Client(router.address, API_KEY) as client:
            for process in replicas:
                process.popen.kill()
                process.popen.wait()

            async def none_healthy() -> bool:
                return await healthy_replicas(client) == 0

            await eventually(none_healthy)
            with pytest.raises(grpc.aio.AioRpcError) as down:
                await client.generate(text_request("anyone?"))
            details = error_details(down.value)
            assert details.code == grpc.StatusCode.UNAVAILABLE
            assert details.metadata == {"binding": "pair"}
            assert details.retry_after is not None
    finally:
        router.terminate()


async def test_a_hung_replica_leaves_the_rotation(replicas: list[ServiceProcess]) -> None:
    """A stopped process keeps its sockets open; keepalive pings still find it out."""
    hung = replicas[0]
    router = pair_router(replicas)
    try:
        async with Client(router.address, API_KEY) as client:
            hung.popen.send_signal(signal.SIGSTOP)

            async def one_left() -> bool:
                return await healthy_replicas(client) == 1

            await eventually(one_left, timeout=60)
            served = [
                (await client.generate(text_request("still here"), timeout=10)).model
                for _ in range(4)
            ]
            assert served == ["echo-b"] * 4
    finally:
        hung.popen.send_signal(signal.SIGCONT)
        router.terminate()
