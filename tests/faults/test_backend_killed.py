"""A modality service dies mid-stream: the client hears UNAVAILABLE at once (not at its
deadline), and the router sends new requests to the replica that is still up."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from genmesh.client import error_details
from tests.faults.conftest import generate, slow, stream
from tests.support import ServiceProcess, echo_binding, router_config
from tests.telemetry.conftest import scrape

INFER = "genmesh.v1.InferenceService/Infer"


@pytest.fixture
def replicas() -> Iterator[tuple[list[ServiceProcess], ServiceProcess]]:
    ttts = [ServiceProcess("ttt", {"metrics_port": 0}) for _ in range(2)]
    router = ServiceProcess("router", router_config([echo_binding(*(t.address for t in ttts))]))
    yield ttts, router
    for process in (router, *ttts):
        process.terminate()


def active_streams(process: ServiceProcess) -> float:
    samples = scrape(process).get("genmesh_active_streams", [])
    return sum(v for labels, v in samples if labels.get("method") == INFER)


async def test_killed_replica_gives_unavailable_and_traffic_moves_on(
    replicas: tuple[list[ServiceProcess], ServiceProcess],
) -> None:
    ttts, router = replicas
    async with grpc.aio.insecure_channel(router.address) as channel:
        call = stream(channel, slow(600, 20))
        first = await anext(aiter(call))
        assert first.event.text_delta.text == "x"
        serving = next(t for t in ttts if active_streams(t) == 1)
        serving.popen.kill()
        serving.popen.wait()

        with pytest.raises(grpc.aio.AioRpcError) as failure:
            async for _ in call:
                pass
        # The 60 s deadline is far away: the break itself is reported.
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        details = error_details(failure.value)
        assert details.metadata.get("binding") == "echo"

        for index in range(6):
            assert await generate(channel, f"after {index}") == f"after {index}"
