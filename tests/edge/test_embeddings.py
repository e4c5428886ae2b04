"""`/v1/embeddings` with the official OpenAI SDK, sync and async, against the embedded
all-MiniLM-L6-v2 on the echo edge's ttt service."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from genmesh.client import Client
from genmesh.ttt.settings import DEFAULT_EMBEDDING_MODEL
from genmesh.v1 import tokenizer_pb2
from tests.edge.conftest import raw
from tests.support import ServiceProcess, client_fixture

router_client = client_fixture("echo_router")


def vectors(response: Any) -> list[np.ndarray[Any, Any]]:
    return [np.array(item.embedding, dtype=np.float32) for item in response.data]


def test_semantic_order_and_usage(client: OpenAI) -> None:
    response = client.embeddings.create(
        model="echo", input=["cat", "kitten", "tax"], encoding_format="float"
    )
    assert response.object == "list"
    assert [item.index for item in response.data] == [0, 1, 2]
    assert response.model == "echo"
    cat, kitten, tax = vectors(response)
    assert len(cat) == 384
    assert cat @ kitten > cat @ tax
    assert response.usage.prompt_tokens == response.usage.total_tokens == 9


async def test_base64_is_the_same_floats(aclient: AsyncOpenAI) -> None:
    """The SDK asks for base64 unless told otherwise, and decodes it itself."""
    floats = await aclient.embeddings.create(
        model="echo", input="cat", encoding_format="float", dimensions=384
    )
    decoded = await aclient.embeddings.create(model="echo", input="cat")
    assert vectors(decoded)[0].tolist() == vectors(floats)[0].tolist()


def test_base64_on_the_wire_is_little_endian_float32(edge: ServiceProcess) -> None:
    body = {"model": "echo", "input": "cat"}
    floats = raw(edge, "POST", "/v1/embeddings", json.dumps(body).encode()).json()
    encoded = raw(
        edge, "POST", "/v1/embeddings", json.dumps({**body, "encoding_format": "base64"}).encode()
    ).json()
    data = base64.b64decode(encoded["data"][0]["embedding"])
    assert np.frombuffer(data, dtype="<f4").tolist() == (
        np.array(floats["data"][0]["embedding"], dtype=np.float32).tolist()
    )


async def test_token_arrays_embed_like_their_text(client: OpenAI, router_client: Client) -> None:
    tokenized = await router_client.tokenizer.Tokenize(
        tokenizer_pb2.TokenizeRequest(binding="echo", model=DEFAULT_EMBEDDING_MODEL, text="cat"),
        metadata=router_client.metadata,
    )
    ids = list(tokenized.tokens)
    as_text = vectors(client.embeddings.create(model="echo", input="cat"))[0]
    one = vectors(client.embeddings.create(model="echo", input=ids))
    two = vectors(client.embeddings.create(model="echo", input=[ids, ids]))
    assert len(one) == 1 and len(two) == 2
    for vector in (*one, *two):
        assert float(vector @ as_text) > 0.999


@pytest.mark.parametrize(
    "model",
    ["echo", f"echo/{DEFAULT_EMBEDDING_MODEL}", DEFAULT_EMBEDDING_MODEL, "text-embedding-3-small"],
)
def test_model_names(client: OpenAI, model: str) -> None:
    response = client.embeddings.create(model=model, input="cat")
    assert response.model == model
    assert len(response.data[0].embedding) == 384


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"input": ["ok", ""]}, 400, "input"),
        ({"input": []}, 400, "input"),
        ({"input": [[]]}, 400, "input"),
        ({"input": [[1, 2**40]]}, 400, "input"),
        ({"input": [[1, 10**8]]}, 400, "input"),
        ({"input": ["ok", 5]}, 400, "input[1]"),
        ({"input": "x", "dimensions": 10}, 400, "dimensions"),
        ({"input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"input": "lorem ipsum " * 400}, 400, "input"),
        ({"input": "x", "model": "nope"}, 404, "model"),
        ({"input": "x", "model": "echo/nope"}, 404, "model"),
    ],
)
def test_bad_inputs_name_the_parameter(
    edge: ServiceProcess, body: dict[str, Any], status: int, param: str
) -> None:
    answer = raw(edge, "POST", "/v1/embeddings", json.dumps({"model": "echo", **body}).encode())
    assert answer.status == status, answer.body
    assert answer.json()["error"]["param"] == param


def test_a_long_input_is_cut_when_asked(client: OpenAI) -> None:
    response = client.embeddings.create(
        model="echo", input="lorem ipsum " * 400, extra_body={"truncation": "end"}
    )
    assert len(response.data[0].embedding) == 384


def test_sdk_error_is_bad_request(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="echo", input=["fine", ""])
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == "input"
