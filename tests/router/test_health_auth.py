"""Health, reflection and API keys on every process."""

from __future__ import annotations

import hashlib

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from genmesh.client import error_details
from genmesh.ttt.settings import DEFAULT_EMBEDDING_MODEL
from genmesh.v1 import (
    inference_pb2,
    inference_pb2_grpc,
)
from tests.router.mesh import CALLS
from tests.support import API_KEY, INTERNAL_KEY, ServiceProcess

SERVING = health_pb2.HealthCheckResponse.SERVING


async def _reflected_services(address: str, key: str) -> list[str]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(metadata=(("x-api-key", key),))
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        await call.done_writing()
        names: list[str] = []
        async for response in call:
            names.extend(s.name for s in response.list_services_response.service)
        return names


@pytest.mark.parametrize(
    ("fixture", "services"),
    [
        (
            "router",
            [
                "genmesh.v1.GenerationService",
                "genmesh.v1.CatalogService",
                "genmesh.v1.TokenizerService",
                "genmesh.v1.EmbeddingService",
            ],
        ),
        ("ttt", ["genmesh.v1.InferenceService"]),
    ],
)
async def test_health_and_reflection(
    fixture: str, services: list[str], request: pytest.FixtureRequest
) -> None:
    process: ServiceProcess = request.getfixturevalue(fixture)
    async with grpc.aio.insecure_channel(process.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ["", *services]:
            answer = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert answer.status == SERVING, name
        watch = health.Watch(health_pb2.HealthCheckRequest(service=services[0]))
        first = await anext(aiter(watch))
        assert first.status == SERVING
        watch.cancel()
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await _reflected_services(process.address, API_KEY)
    assert set(services) <= set(listed)
    assert "grpc.health.v1.Health" in listed


async def test_reflection_describes_the_contract(router: ServiceProcess) -> None:
    async with grpc.aio.insecure_channel(router.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(metadata=(("x-api-key", API_KEY),))
        await call.write(
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="genmesh.v1.GenerationService"
            )
        )
        await call.done_writing()
        response = await anext(aiter(call))
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    methods = {
        m.name for f in files for s in f.service if s.name == "GenerationService" for m in s.method
    }
    assert methods == {"Generate", "GenerateStream", "Converse"}


# Agent RPCs need a sandbox; they are accepted (with one) in test_scopes.
WITHOUT_SANDBOX = sorted(name for name in CALLS if not name.startswith("AgentService."))


@pytest.mark.parametrize("method", sorted(CALLS))
@pytest.mark.parametrize(
    "metadata",
    [(), (("x-api-key", "wrong"),), (("authorization", "Bearer wrong"),)],
    ids=["missing", "wrong-x-api-key", "wrong-bearer"],
)
async def test_public_rpcs_reject_bad_keys(
    router: ServiceProcess, method: str, metadata: tuple[tuple[str, str], ...]
) -> None:
    async with grpc.aio.insecure_channel(router.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await CALLS[method][1](channel, metadata)
    details = error_details(failure.value)
    assert details.code == grpc.StatusCode.UNAUTHENTICATED
    assert details.reason == "API_KEY_INVALID"


@pytest.mark.parametrize("method", WITHOUT_SANDBOX)
@pytest.mark.parametrize("header", ["x-api-key", "authorization"])
async def test_public_rpcs_accept_the_key(router: ServiceProcess, method: str, header: str) -> None:
    value = API_KEY if header == "x-api-key" else f"Bearer {API_KEY}"
    async with grpc.aio.insecure_channel(router.address) as channel:
        await CALLS[method][1](channel, ((header, value),))


async def test_internal_service_needs_the_internal_scope(ttt: ServiceProcess) -> None:
    limited = ServiceProcess(
        "ttt",
        {
            "api_keys": [
                {
                    "name": "reader",
                    "sha256": hashlib.sha256(b"reader-key").hexdigest(),
                    "scopes": ["generate"],
                }
            ]
        },
    )
    try:
        async with grpc.aio.insecure_channel(limited.address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            request = inference_pb2.InferenceServiceListModelsRequest()
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await stub.ListModels(request, metadata=(("x-api-key", "reader-key"),))
            details = error_details(denied.value)
            assert details.code == grpc.StatusCode.PERMISSION_DENIED
            assert details.metadata == {"scope": "internal"}
            allowed = await stub.ListModels(request, metadata=(("x-api-key", INTERNAL_KEY),))
            assert [m.name for m in allowed.models] == ["echo", DEFAULT_EMBEDDING_MODEL]
    finally:
        limited.terminate()
