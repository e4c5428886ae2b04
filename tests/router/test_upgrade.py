"""A router newer than its services, as in the middle of a rolling upgrade: a service that has
only the Infer stream still answers unary generations (the router falls back to the stream)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from genmesh.client import Client, text_request
from genmesh.router.backends import INFERENCE_SERVICE
from genmesh.runtime.channel import channel_options
from genmesh.v1 import common_pb2, inference_pb2
from tests.support import API_KEY, ServiceProcess, echo_binding, router_config


async def infer_only(
    request_iterator: AsyncIterator[inference_pb2.InferRequest], context: object
) -> AsyncIterator[inference_pb2.InferResponse]:
    """Infer of a service of the version before InferenceService.Generate, its only RPC."""
    opening = await anext(request_iterator)
    prompt = opening.request.inputs[0].text
    delta = common_pb2.TextDelta(text=prompt)
    yield inference_pb2.InferResponse(event=common_pb2.StreamEvent(text_delta=delta))
    final = common_pb2.GenerateResponse(
        finish_reason=common_pb2.FINISH_REASON_STOP,
        outputs=[common_pb2.OutputItem(kind=common_pb2.CONTENT_KIND_TEXT, text=prompt)],
    )
    yield inference_pb2.InferResponse(event=common_pb2.StreamEvent(final=final))


async def test_unary_generation_falls_back_to_the_stream_of_an_older_service() -> None:
    server = grpc.aio.server(options=channel_options(4 * 1024 * 1024))
    infer = grpc.stream_stream_rpc_method_handler(
        infer_only,
        request_deserializer=inference_pb2.InferRequest.FromString,
        response_serializer=inference_pb2.InferResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(INFERENCE_SERVICE, {"Infer": infer}),)
    )
    healthy = health.aio.HealthServicer()
    await healthy.set(INFERENCE_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(healthy, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    router = ServiceProcess("router", router_config([echo_binding(f"127.0.0.1:{port}")]))
    try:
        async with Client(router.address, API_KEY) as client:
            response = await client.generate(text_request("still served"))
            assert response.outputs[0].text == "still served"
            assert response.finish_reason == common_pb2.FINISH_REASON_STOP
            # Streams were never affected.
            events = [e async for e in client.generate_stream(text_request("streamed"))]
            assert events[-1].final.outputs[0].text == "streamed"
    finally:
        router.terminate()
        await server.stop(None)
