"""`genmesh embed`: text embeddings through the router's EmbeddingService."""

from __future__ import annotations

import asyncio
import json

import click
import grpc
from google.protobuf import json_format

from genmesh.cli.audio import address_option, fail, key_option
from genmesh.client import Client
from genmesh.v1 import embedding_pb2, embedding_pb2_grpc


async def request_embeddings(
    address: str, api_key: str | None, request: embedding_pb2.EmbedRequest
) -> embedding_pb2.EmbedResponse:
    async with Client(address, api_key) as client:
        stub: embedding_pb2_grpc.EmbeddingServiceAsyncStub = (
            embedding_pb2_grpc.EmbeddingServiceStub(client.channel)
        )
        response: embedding_pb2.EmbedResponse = await stub.Embed(request, metadata=client.metadata)
        return response


@click.command()
@address_option
@key_option
@click.option("--binding", default="", help="Text binding (default: the text default).")
@click.option("--model", default="", help="Embedding model (default: the service's).")
@click.option("--no-truncation", is_flag=True, help="Refuse texts longer than the model's window.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole response as JSON.")
@click.argument("texts", nargs=-1, required=True)
def embed(
    address: str,
    api_key: str | None,
    binding: str,
    model: str,
    no_truncation: bool,
    as_json: bool,
    texts: tuple[str, ...],
) -> None:
    """Embed each TEXT: one vector per line as a JSON array (unit length, so a dot product is
    the cosine similarity)."""
    request = embedding_pb2.EmbedRequest(
        binding=binding,
        model=model,
        inputs=[embedding_pb2.EmbedInput(text=text) for text in texts],
        truncation=embedding_pb2.TRUNCATION_NONE if no_truncation else embedding_pb2.TRUNCATION_END,
    )
    try:
        response = asyncio.run(request_embeddings(address, api_key, request))
    except grpc.aio.AioRpcError as error:
        fail(error)
    if as_json:
        click.echo(json_format.MessageToJson(response))
        return
    for embedding in response.embeddings:
        # As in --json: each float in the shortest text that reads back as the same float32.
        click.echo(json.dumps(json_format.MessageToDict(embedding)["values"]))
        if embedding.truncated:
            click.echo(
                f"warning: text {embedding.index + 1} was cut to {embedding.tokens} tokens",
                err=True,
            )
