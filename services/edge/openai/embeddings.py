"""`/v1/embeddings` over EmbeddingService.Embed.

`model` is a text binding, `binding/model`, an embedding model of the default text binding by
its own name, or one of OpenAI's embedding model names (the default binding's default embedding
model). Token arrays are ids in the embedding model's own vocabulary. `encoding_format` base64
asks the mesh for little-endian float32 bytes, which are what OpenAI's base64 holds. An input
longer than the model's window is refused (400 naming `input`), as OpenAI does; genmesh's
`truncation: "end"` (in the SDK's `extra_body`) embeds its first tokens instead.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import grpc
from fastapi import APIRouter, Request
from pydantic import Field

from genmesh.client import error_details
from genmesh.edge import errors
from genmesh.edge.mesh import Caller, Mesh, unless_disconnected
from genmesh.edge.openai.common import (
    CallerDep,
    Count,
    MeshDep,
    OpenAIRequest,
    SettingsDep,
    binding_and_model,
)
from genmesh.v1 import embedding_pb2

router = APIRouter()
TRUNCATION = {"end": embedding_pb2.TRUNCATION_END, "none": embedding_pb2.TRUNCATION_NONE}
ENCODING = {
    "float": embedding_pb2.EMBEDDING_ENCODING_FLOAT,
    "base64": embedding_pb2.EMBEDDING_ENCODING_FLOAT32_BYTES,
}
TokenId = int
Input = str | list[str] | list[TokenId] | list[list[TokenId]]


class EmbeddingRequest(OpenAIRequest):
    input: Input
    model: str = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Count | None = None
    # genmesh's own, sent with the OpenAI SDK's `extra_body`.
    truncation: Literal["end", "none"] = "none"

    def inputs(self) -> list[embedding_pb2.EmbedInput]:
        """One input per string or token array; an empty list, string or array is refused."""
        items: list[str] | list[list[int]]
        if isinstance(self.input, str):
            items = [self.input]
        elif self.input and all(isinstance(i, int) for i in self.input):
            items = [[i for i in self.input if isinstance(i, int)]]
        else:
            items = self.input  # type: ignore[assignment]
        if not items:
            raise errors.invalid("input", "input: at least one input is required")
        inputs = []
        with errors.out_of_range("input"):
            for item in items:
                if isinstance(item, str):
                    inputs.append(embedding_pb2.EmbedInput(text=item))
                else:
                    ids = embedding_pb2.TokenIds(ids=item)
                    inputs.append(embedding_pb2.EmbedInput(tokens=ids))
        return inputs

    def request(self, request_id: str, binding: str, model: str) -> embedding_pb2.EmbedRequest:
        return embedding_pb2.EmbedRequest(
            request_id=request_id,
            binding=binding,
            model=model,
            inputs=self.inputs(),
            truncation=TRUNCATION[self.truncation],
            encoding=ENCODING[self.encoding_format],
            dimensions=self.dimensions or 0,
        )


def unknown_binding(error: grpc.aio.AioRpcError) -> bool:
    details = error_details(error)
    return details.code == grpc.StatusCode.NOT_FOUND and "binding" in details.violations


async def embed(
    mesh: Mesh, caller: Caller, body: EmbeddingRequest, aliases: dict[str, str]
) -> embedding_pb2.EmbedResponse:
    """`model` as a binding (or `binding/model`) first; a single name that is no binding is
    then an embedding model of the default binding."""
    binding, model = binding_and_model(body.model, aliases)
    request = body.request(caller.request_id, binding, model)
    call = mesh.embedding.Embed
    options: dict[str, Any] = {"metadata": caller.metadata, "timeout": caller.deadline}
    try:
        response: embedding_pb2.EmbedResponse = await call(request, **options)
    except grpc.aio.AioRpcError as error:
        if model or not binding or not unknown_binding(error):
            raise
        request.binding, request.model = "", binding
        response = await call(request, **options)
    return response


def vector(embedding: embedding_pb2.Embedding, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(embedding.float32).decode("ascii")
    return list(embedding.values)


@router.post("/v1/embeddings")
async def embeddings(
    body: EmbeddingRequest, http: Request, mesh: MeshDep, caller: CallerDep, settings: SettingsDep
) -> dict[str, Any]:
    with errors.translated(errors.EMBEDDING_PARAMS):
        response = await unless_disconnected(
            http, embed(mesh, caller, body, settings.aliases("embedding"))
        )
    data = [
        {"object": "embedding", "index": e.index, "embedding": vector(e, body.encoding_format)}
        for e in response.embeddings
    ]
    tokens = response.usage.prompt_tokens
    return {
        "object": "list",
        "data": data,
        "model": body.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
