"""EmbeddingService: embeddings from the embedding models of text bindings.

An embedding model lives on a text service (ttt) beside its generation models, so a request
names a text binding (or takes the default one) and, optionally, the embedding model; an empty
model takes the service's default embedding model, not the binding's chat model. The call waits
for a slot of the binding like a generation, and an unavailable replica is retried once on
another (embedding is idempotent). What is wrong with the inputs the service answers, with the
fields named; the router checks only the names and the request id.
"""

from __future__ import annotations

from genmesh.router import validation
from genmesh.router.backends import Backends
from genmesh.router.catalog import call_backend, text_route
from genmesh.router.dispatch import Context
from genmesh.runtime.timing import Stopwatch
from genmesh.v1 import embedding_pb2, embedding_pb2_grpc, inference_pb2


class EmbeddingService(embedding_pb2_grpc.EmbeddingServiceServicer):
    def __init__(self, backends: Backends) -> None:
        self.backends = backends

    async def Embed(  # noqa: N802 - gRPC method name
        self, request: embedding_pb2.EmbedRequest, context: Context
    ) -> embedding_pb2.EmbedResponse:
        clock = Stopwatch()
        request.request_id = validation.request_id(request.request_id)
        context.set_trailing_metadata((("x-request-id", request.request_id),))
        route = text_route(self.backends, request.binding, request.model, "embedding models")
        async with route.slots.slot():
            clock.dequeued()
            answer: inference_pb2.InferenceServiceEmbedResponse = await call_backend(
                route, "Embed", inference_pb2.InferenceServiceEmbedRequest(request=request), context
            )
        response = answer.response
        response.binding = route.name
        backend_queue = response.timings.queue.ToTimedelta().total_seconds()
        response.timings.CopyFrom(clock.timings(extra_queue_s=backend_queue))
        context.set_trailing_metadata((("x-request-id", request.request_id), *clock.metadata()))
        return response
