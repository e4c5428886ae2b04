"""Prometheus endpoints: GenAI semantic-convention metrics, queue depth, active streams and the
sandbox's runs and violations, read by scraping each service."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest

from genmesh.client import text_request
from genmesh.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    generation_pb2,
    generation_pb2_grpc,
    program_pb2,
)
from tests.support import API_KEY, ServiceProcess
from tests.telemetry.conftest import TracedMesh, scrape

KEY = (("x-api-key", API_KEY),)
STREAM = "genmesh.v1.GenerationService/GenerateStream"
INFER = "genmesh.v1.InferenceService/Infer"


def value(process: ServiceProcess, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    samples = scrape(process).get(name, [])
    return sum(v for found, v in samples if labels.items() <= found.items())


async def settled(check: Callable[[], bool]) -> None:
    """Gives `check` up to 5 s to hold: metrics are recorded as calls end, not as clients see
    them end. The caller asserts what it needs afterwards, so a failure names the value."""
    for _ in range(100):
        if check():
            return
        await asyncio.sleep(0.05)


def slow_request(prompt: str, delay_ms: int) -> common_pb2.GenerateRequest:
    request = text_request(prompt)
    request.extra.update({"delay_ms": delay_ms})
    return request


async def test_generation_metrics_follow_the_genai_conventions(traced: TracedMesh) -> None:
    prompts = ["one", "three", "twenty-one characters"]
    before = {
        p: value(p, "gen_ai_client_token_usage_sum", gen_ai_token_type="output")
        for p in (traced.router, traced.ttt)
    }
    async with grpc.aio.insecure_channel(traced.router.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        for prompt in prompts:
            await stub.Generate(text_request(prompt), metadata=KEY)

    for process in (traced.router, traced.ttt):
        model = {"gen_ai_request_model": "echo"}
        output = value(process, "gen_ai_client_token_usage_sum", gen_ai_token_type="output")
        assert output - before[process] == sum(len(p) for p in prompts)
        assert value(process, "gen_ai_server_request_duration_seconds_count", **model) >= 3
        assert value(process, "gen_ai_server_time_to_first_token_seconds_count", **model) >= 3
        assert value(process, "gen_ai_server_time_per_output_token_seconds_count", **model) >= 3
        assert (
            value(
                process, "gen_ai_server_request_duration_seconds_bucket", le="+Inf", error_type=""
            )
            >= 3
        )


async def test_failed_generation_is_counted_with_its_error_type(traced: TracedMesh) -> None:
    async with grpc.aio.insecure_channel(traced.router.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        request = text_request("x", parameters=common_pb2.TextParameters(temperature=99))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Generate(request, metadata=KEY)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # An error's status goes out before the router's telemetry has recorded the call.
    count = "gen_ai_server_request_duration_seconds_count"
    await settled(lambda: value(traced.router, count, error_type="INVALID_ARGUMENT") >= 1)
    assert value(traced.router, count, error_type="INVALID_ARGUMENT") >= 1


async def test_active_streams_and_queue_depth_while_busy(traced: TracedMesh) -> None:
    """Two slow streams on the echo model (one slot): one runs, the other waits in its queue."""
    async with grpc.aio.insecure_channel(traced.router.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        request = generation_pb2.GenerateStreamRequest(request=slow_request("x" * 200, 50))
        calls = [stub.GenerateStream(request, metadata=KEY) for _ in range(2)]
        firsts = [asyncio.ensure_future(anext(aiter(call))) for call in calls]
        await asyncio.wait(firsts, return_when=asyncio.FIRST_COMPLETED)
        # One runs; the other may still be on its way to the service's queue.
        await settled(lambda: value(traced.ttt, "genmesh_queue_depth", queue="echo") == 1)
        assert value(traced.router, "genmesh_active_streams", method=STREAM) == 2
        assert value(traced.ttt, "genmesh_active_streams", method=INFER) == 2
        assert value(traced.ttt, "genmesh_queue_depth", queue="echo") == 1
        for call in calls:
            call.cancel()
        await asyncio.gather(*firsts, return_exceptions=True)
    await settled(lambda: value(traced.ttt, "genmesh_active_streams", method=INFER) == 0)
    assert value(traced.router, "genmesh_active_streams", method=STREAM) == 0
    assert value(traced.ttt, "genmesh_active_streams", method=INFER) == 0
    assert value(traced.ttt, "genmesh_queue_depth", queue="echo") == 0


async def test_sandbox_runs_and_violations(traced: TracedMesh) -> None:
    runs = "genmesh_sandbox_runs_total"
    violations = "genmesh_sandbox_violations_total"
    ok, refused = value(traced.sandbox, runs, outcome="ok"), value(traced.sandbox, violations)
    async with grpc.aio.insecure_channel(traced.router.address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        for code in ("1 + 1", "import os\nos.getcwd()"):
            program = program_pb2.Program(code=code)
            await stub.Execute(agent_pb2.ExecuteRequest(program=program), metadata=KEY)
    assert value(traced.sandbox, runs, outcome="ok") == ok + 1
    assert value(traced.sandbox, runs, outcome="violation") >= 1
    assert value(traced.sandbox, violations, layer="dialect") == refused + 1
