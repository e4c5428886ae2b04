"""Embeddings through the mesh: the router's EmbeddingService in front of the session's ttt
service (its embedded all-MiniLM-L6-v2), the catalog's model kinds, the REST path through the
gateway and `genmesh embed`."""

from __future__ import annotations

import base64
import json

import grpc
import numpy as np
import pytest

from genmesh.client import Client, error_details
from genmesh.ttt.settings import DEFAULT_EMBEDDING_MODEL
from genmesh.v1 import catalog_pb2, common_pb2, embedding_pb2, embedding_pb2_grpc
from tests.gateway.conftest import Rest, rest  # noqa: F401 - the gateway fixture
from tests.support import ServiceProcess, run_cli


def embed_request(*texts: str, **fields: object) -> embedding_pb2.EmbedRequest:
    inputs = [embedding_pb2.EmbedInput(text=t) for t in texts]
    return embedding_pb2.EmbedRequest(inputs=inputs, **fields)  # type: ignore[arg-type]


async def embed(client: Client, request: embedding_pb2.EmbedRequest) -> embedding_pb2.EmbedResponse:
    stub: embedding_pb2_grpc.EmbeddingServiceAsyncStub = embedding_pb2_grpc.EmbeddingServiceStub(
        client.channel
    )
    response: embedding_pb2.EmbedResponse = await stub.Embed(request, metadata=client.metadata)
    return response


async def test_embed_through_the_router(client: Client) -> None:
    response = await embed(client, embed_request("cat", "kitten", "tax", request_id="emb-1"))
    assert response.request_id == "emb-1"
    assert response.binding == "echo"
    assert response.model == DEFAULT_EMBEDDING_MODEL
    assert response.dimensions == 384
    assert response.usage.prompt_tokens == 9
    assert response.timings.total.ToNanoseconds() > 0
    cat, kitten, tax = (np.array(e.values) for e in response.embeddings)
    assert cat @ kitten > cat @ tax


@pytest.mark.parametrize(
    ("request_fields", "code", "field"),
    [
        ({}, grpc.StatusCode.INVALID_ARGUMENT, "inputs"),
        ({"binding": "no-such-binding"}, grpc.StatusCode.NOT_FOUND, "binding"),
        ({"model": "no-such-model"}, grpc.StatusCode.NOT_FOUND, "model"),
        ({"model": "echo"}, grpc.StatusCode.NOT_FOUND, "model"),
        ({"request_id": "\n"}, grpc.StatusCode.INVALID_ARGUMENT, "request_id"),
    ],
)
async def test_bad_requests_name_the_field(
    client: Client, request_fields: dict[str, object], code: grpc.StatusCode, field: str
) -> None:
    texts = () if not request_fields else ("x",)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await embed(client, embed_request(*texts, **request_fields))
    details = error_details(caught.value)
    assert details.code == code
    assert field in details.violations


async def test_the_catalog_says_each_models_kind(client: Client) -> None:
    listed = await client.catalog.ListModels(
        catalog_pb2.ListModelsRequest(), metadata=client.metadata
    )
    kinds = {m.name: m.kind for m in listed.models}
    assert kinds["echo"] == common_pb2.MODEL_KIND_CHAT
    assert kinds[DEFAULT_EMBEDDING_MODEL] == common_pb2.MODEL_KIND_EMBEDDING
    only = await client.catalog.ListModels(
        catalog_pb2.ListModelsRequest(kind=common_pb2.MODEL_KIND_EMBEDDING),
        metadata=client.metadata,
    )
    assert [m.name for m in only.models] == [DEFAULT_EMBEDDING_MODEL]
    info = await client.catalog.GetModelInfo(
        catalog_pb2.GetModelInfoRequest(binding="echo", model=DEFAULT_EMBEDDING_MODEL),
        metadata=client.metadata,
    )
    assert info.model.kind == common_pb2.MODEL_KIND_EMBEDDING
    assert info.model.binding == "echo"
    assert info.model.details["dimensions"] == 384


def test_rest_embed_through_the_gateway(rest: Rest) -> None:  # noqa: F811 - the fixture
    body = {"inputs": [{"text": "cat"}, {"text": "kitten"}], "request_id": "rest-emb"}
    floats = rest.call("POST", "/v1/embed", body)
    assert floats.status == 200
    assert floats.headers["X-Request-Id"] == "rest-emb"
    assert floats.body["model"] == DEFAULT_EMBEDDING_MODEL
    vectors = [e["values"] for e in floats.body["embeddings"]]
    assert [len(v) for v in vectors] == [384, 384]
    raw = rest.call("POST", "/v1/embed", {**body, "encoding": "EMBEDDING_ENCODING_FLOAT32_BYTES"})
    assert raw.status == 200
    decoded = np.frombuffer(base64.b64decode(raw.body["embeddings"][0]["float32"]), dtype="<f4")
    assert decoded.tolist() == np.array(vectors[0], dtype=np.float32).tolist()


def test_rest_bad_input_is_400_naming_the_field(rest: Rest) -> None:  # noqa: F811
    response = rest.call("POST", "/v1/embed", {"inputs": [{"text": "ok"}, {"text": ""}]})
    assert response.status == 400
    details = {d["@type"].rsplit("/", 1)[-1]: d for d in response.body["details"]}
    fields = [v["field"] for v in details["google.rpc.BadRequest"]["field_violations"]]
    assert fields == ["inputs[1].text"]


def test_cli_prints_one_vector_per_text(router: ServiceProcess) -> None:
    done = run_cli(router, "embed", "cat", "kitten")
    assert done.returncode == 0, done.stderr
    vectors = [json.loads(line) for line in done.stdout.splitlines()]
    assert [len(v) for v in vectors] == [384, 384]
    as_json = run_cli(router, "embed", "--json", "cat")
    assert as_json.returncode == 0, as_json.stderr
    response = json.loads(as_json.stdout)
    assert response["model"] == DEFAULT_EMBEDDING_MODEL
    assert response["embeddings"][0]["values"] == vectors[0]


def test_cli_names_the_field_of_a_refusal(router: ServiceProcess) -> None:
    failed = run_cli(router, "embed", "--model", "no-such-model", "cat")
    assert failed.returncode == 1
    assert "NOT_FOUND" in failed.stderr
    assert "model: unknown model 'no-such-model'" in failed.stderr
