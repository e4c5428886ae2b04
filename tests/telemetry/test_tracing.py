"""One trace per request across the mesh, exported over OTLP, with the request's figures."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator

import grpc
import pytest

from genmesh.client import text_request
from genmesh.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
    program_pb2,
)
from tests.gateway.process import GatewayProcess
from tests.support import API_KEY
from tests.telemetry.conftest import TRACING_ENV, Span, TracedMesh, new_trace

ROUTER, TTT, SANDBOX = "genmesh-router", "genmesh-ttt", "genmesh-sandbox"
GATEWAY = "genmesh-gateway"
GENERATE = "genmesh.v1.GenerationService/Generate"
INFER = "genmesh.v1.InferenceService/Infer"
# What the router calls on a service for a unary generation.
INFER_WHOLE = "genmesh.v1.InferenceService/Generate"


def named(spans: list[Span], service: str, name: str) -> Span:
    found = [s for s in spans if s.service == service and s.name == name]
    assert len(found) == 1, f"{service} {name}: {found} in {spans}"
    return found[0]


def having(*wanted: tuple[str, str]) -> Callable[[list[Span]], bool]:
    return lambda spans: all(any((s.service, s.name) == w for s in spans) for w in wanted)


def assert_generation(span: Span, request_id: str, prompt: str) -> None:
    """The GenAI attributes of a finished echo generation."""
    assert span.attributes["genmesh.request_id"] == request_id
    assert span.attributes["gen_ai.response.model"] == "echo"
    assert span.attributes["gen_ai.usage.output_tokens"] == len(prompt)
    assert span.attributes["gen_ai.usage.input_tokens"] == len(prompt)
    assert span.attributes["gen_ai.response.finish_reasons"] == ["FINISH_REASON_STOP"]
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]


async def test_generate_is_one_trace_client_router_ttt(traced: TracedMesh) -> None:
    trace_id, client_span, header = new_trace()
    prompt = "trace me"
    async with grpc.aio.insecure_channel(traced.router.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        response = await stub.Generate(
            text_request(prompt, request_id="traced-unary"),
            metadata=(("x-api-key", API_KEY), *header),
        )
    assert response.outputs[0].text == prompt

    spans = traced.receiver.trace(trace_id, having((ROUTER, GENERATE), (TTT, INFER_WHOLE)))
    router = named(spans, ROUTER, GENERATE)
    ttt = named(spans, TTT, INFER_WHOLE)
    assert (router.parent_id, router.kind) == (client_span, "SPAN_KIND_SERVER")
    assert ttt.parent_id == router.span_id
    assert router.start_ns <= ttt.start_ns and ttt.end_ns <= router.end_ns
    assert_generation(router, "traced-unary", prompt)
    assert router.attributes["genmesh.binding"] == "echo"
    assert_generation(ttt, "traced-unary", prompt)


async def test_stream_span_has_time_to_first_token(traced: TracedMesh) -> None:
    trace_id, client_span, header = new_trace()
    prompt = "streamed"
    request = generation_pb2.GenerateStreamRequest(
        request=text_request(prompt, request_id="traced-stream")
    )
    async with grpc.aio.insecure_channel(traced.router.address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        call = stub.GenerateStream(request, metadata=(("x-api-key", API_KEY), *header))
        text = "".join([r.event.text_delta.text async for r in call])
    assert text == prompt

    name = "genmesh.v1.GenerationService/GenerateStream"
    spans = traced.receiver.trace(trace_id, having((ROUTER, name), (TTT, INFER)))
    router = named(spans, ROUTER, name)
    assert router.parent_id == client_span
    assert named(spans, TTT, INFER).parent_id == router.span_id
    assert_generation(router, "traced-stream", prompt)
    assert router.attributes["genmesh.time_to_first_token_s"] > 0


async def test_agent_run_traces_router_sandbox_and_callback(traced: TracedMesh) -> None:
    """A sandbox program calling back into the mesh: the callback's generation on the ttt
    service is part of the same trace, while the sandbox run is in progress."""
    trace_id, client_span, header = new_trace()
    code = 'generate_text("from the sandbox")'
    async with grpc.aio.insecure_channel(traced.router.address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        response = await stub.Execute(
            agent_pb2.ExecuteRequest(program=program_pb2.Program(code=code)),
            metadata=(("x-api-key", API_KEY), *header),
        )
    assert response.result.value.string_value == "from the sandbox"

    execute = "genmesh.v1.AgentService/Execute"
    sandbox_name = "genmesh.v1.SandboxService/Execute"
    spans = traced.receiver.trace(
        trace_id,
        having(
            (ROUTER, execute),
            (SANDBOX, sandbox_name),
            (ROUTER, "callback generate_text"),
            (TTT, INFER_WHOLE),
        ),
    )
    router = named(spans, ROUTER, execute)
    sandbox = named(spans, SANDBOX, sandbox_name)
    callback = named(spans, ROUTER, "callback generate_text")
    ttt = named(spans, TTT, INFER_WHOLE)
    assert router.parent_id == client_span
    assert sandbox.parent_id == router.span_id
    assert callback.parent_id == router.span_id
    assert ttt.parent_id == callback.span_id
    assert callback.attributes["genmesh.function"] == "generate_text"
    assert sandbox.start_ns <= callback.start_ns and callback.end_ns <= sandbox.end_ns
    assert sandbox.attributes["genmesh.sandbox.outcome"] == "ok"
    assert sandbox.attributes["genmesh.sandbox.calls"] == 1
    assert ttt.attributes["gen_ai.usage.output_tokens"] == len("from the sandbox")


@pytest.fixture(scope="module")
def gateway(traced: TracedMesh) -> Iterator[GatewayProcess]:
    process = GatewayProcess(
        traced.router.address, f"-otlp-endpoint={traced.otlp_endpoint}", env=TRACING_ENV
    )
    yield process
    process.terminate()


def test_rest_request_is_one_trace_client_gateway_router_ttt(
    traced: TracedMesh, gateway: GatewayProcess
) -> None:
    """client → gateway (its request span, then its call to the router) → router → ttt."""
    trace_id, client_span, header = new_trace()
    body = {"task": "TASK_TEXT", "inputs": [{"text": "over rest"}], "request_id": "traced-rest"}
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    conn.request(
        "POST",
        "/v1/generate",
        json.dumps(body),
        {"Content-Type": "application/json", "X-API-Key": API_KEY, **dict(header)},
    )
    response = conn.getresponse()
    assert response.status == 200, response.read()
    conn.close()

    spans = traced.receiver.trace(
        trace_id,
        having(
            (GATEWAY, "POST /v1/generate"),
            (GATEWAY, GENERATE),
            (ROUTER, GENERATE),
            (TTT, INFER_WHOLE),
        ),
    )
    request = named(spans, GATEWAY, "POST /v1/generate")
    call = named(spans, GATEWAY, GENERATE)
    router = named(spans, ROUTER, GENERATE)
    ttt = named(spans, TTT, INFER_WHOLE)
    assert (request.parent_id, request.kind) == (client_span, "SPAN_KIND_SERVER")
    assert (call.parent_id, call.kind) == (request.span_id, "SPAN_KIND_CLIENT")
    assert router.parent_id == call.span_id
    assert ttt.parent_id == router.span_id
    assert request.start_ns <= router.start_ns and router.end_ns <= request.end_ns
    assert request.attributes["http.request.method"] == "POST"
    assert request.attributes["http.route"] == "/v1/generate"
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["genmesh.request_id"] == "traced-rest"
    assert call.attributes["rpc.method"] == GENERATE
    assert call.attributes["rpc.response.status_code"] == "OK"
    assert_generation(router, "traced-rest", "over rest")
