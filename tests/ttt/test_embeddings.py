"""Embeddings on the ttt service, called as the router calls it: the embedded all-MiniLM-L6-v2
(int8 ONNX) of the session's service, and a service with small limits for batches, truncation,
caps and admission."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from genmesh.client import error_details
from genmesh.ttt.models import default_gguf
from genmesh.ttt.settings import DEFAULT_EMBEDDING_MODEL
from genmesh.v1 import common_pb2, embedding_pb2, inference_pb2, inference_pb2_grpc
from tests.support import INTERNAL_KEY, ServiceProcess, serve

# Tokens per input on the narrow models, special tokens included.
NARROW_TOKENS = 16
NARROW_INPUTS = 5
# The narrow models with the special tokens they put around an input: all-MiniLM-L6-v2 on
# onnxruntime ([CLS] and [SEP]), and SmolLM2's GGUF on llama.cpp (none; mean-pooled, being a
# decoder: real vectors from real weights, though no embedding model).
NARROW = pytest.mark.parametrize(("model", "specials"), [("narrow", 2), ("smol-gguf", 0)])


@dataclass
class Embeddings:
    """A ttt service's Embed, Tokenize and model info, with the router's key."""

    stub: inference_pb2_grpc.InferenceServiceAsyncStub
    metadata = (("x-api-key", INTERNAL_KEY),)

    async def embed(self, *texts: str, **fields: object) -> embedding_pb2.EmbedResponse:
        inputs = [embedding_pb2.EmbedInput(text=t) for t in texts]
        return await self.call(embedding_pb2.EmbedRequest(inputs=inputs, **fields))  # type: ignore[arg-type]

    async def call(self, request: embedding_pb2.EmbedRequest) -> embedding_pb2.EmbedResponse:
        answer = await self.stub.Embed(
            inference_pb2.InferenceServiceEmbedRequest(request=request), metadata=self.metadata
        )
        return answer.response

    async def info(self, model: str) -> common_pb2.ModelInfo:
        request = inference_pb2.InferenceServiceGetModelInfoRequest(model=model)
        return (await self.stub.GetModelInfo(request, metadata=self.metadata)).model


def vectors(response: embedding_pb2.EmbedResponse) -> np.ndarray:
    return np.array([list(e.values) for e in response.embeddings], dtype=np.float32)


@pytest.fixture(scope="module")
def limited_ttt() -> Iterator[ServiceProcess]:
    """`narrow` and `smol-gguf`: a short window, few inputs, batches of two; `single`: one
    request at a time and none queued."""
    limits = {"max_tokens": NARROW_TOKENS, "max_inputs": NARROW_INPUTS, "batch_size": 2}
    embedding_models = [
        {"name": "narrow", **limits},
        {"name": "smol-gguf", "engine": "llama.cpp", "path": str(default_gguf()), **limits},
        {"name": "single", "concurrency": 1, "queue_size": 0},
    ]
    yield from serve("ttt", {"embedding_models": embedding_models})


async def connect(process: ServiceProcess) -> AsyncIterator[Embeddings]:
    async with grpc.aio.insecure_channel(process.address) as channel:
        yield Embeddings(inference_pb2_grpc.InferenceServiceStub(channel))


@pytest.fixture
async def minilm(ttt: ServiceProcess) -> AsyncIterator[Embeddings]:
    async for embeddings in connect(ttt):
        yield embeddings


@pytest.fixture
async def limited(limited_ttt: ServiceProcess) -> AsyncIterator[Embeddings]:
    async for embeddings in connect(limited_ttt):
        yield embeddings


async def refusal(call: Awaitable[object]) -> tuple[grpc.StatusCode, dict[str, str]]:
    """The status code and field violations of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    details = error_details(caught.value)
    return details.code, details.violations


async def test_similar_meanings_are_closer(minilm: Embeddings) -> None:
    response = await minilm.embed("cat", "kitten", "tax")
    cat, kitten, tax = vectors(response)
    assert response.model == DEFAULT_EMBEDDING_MODEL
    assert cat @ kitten > cat @ tax + 0.2
    sentences = vectors(
        await minilm.embed(
            "A cat is sleeping on the sofa.",
            "A kitten naps on the couch.",
            "The income tax return is due in April.",
        )
    )
    assert sentences[0] @ sentences[1] > sentences[0] @ sentences[2] + 0.2


@NARROW
async def test_vectors_are_unit_length_and_deterministic(
    limited: Embeddings, model: str, specials: int
) -> None:
    first = await limited.embed("the same words", "again and again", model=model)
    second = await limited.embed("the same words", "again and again", model=model)
    size = {"narrow": 384, "smol-gguf": 576}[model]
    assert first.dimensions == size
    assert [len(e.values) for e in first.embeddings] == [size, size]
    np.testing.assert_allclose(np.linalg.norm(vectors(first), axis=1), 1.0, atol=1e-5)
    assert vectors(first).tobytes() == vectors(second).tobytes()


async def test_usage_counts_the_tokens_embedded(minilm: Embeddings) -> None:
    response = await minilm.embed("hello world", "cat")
    # [CLS] hello world [SEP] and [CLS] cat [SEP]
    assert [e.tokens for e in response.embeddings] == [4, 3]
    assert response.usage.prompt_tokens == response.usage.total_tokens == 7
    assert [e.index for e in response.embeddings] == [0, 1]
    assert not any(e.truncated for e in response.embeddings)


@NARROW
async def test_token_ids_embed_like_their_text(
    limited: Embeddings, model: str, specials: int
) -> None:
    tokenized = await limited.stub.Tokenize(
        inference_pb2.InferenceServiceTokenizeRequest(model=model, text="a kitten on the sofa"),
        metadata=limited.metadata,
    )
    ids = embedding_pb2.TokenIds(ids=tokenized.tokens)
    by_ids = await limited.call(
        embedding_pb2.EmbedRequest(model=model, inputs=[embedding_pb2.EmbedInput(tokens=ids)])
    )
    by_text = await limited.embed("a kitten on the sofa", model=model)
    assert by_ids.embeddings[0].tokens == len(ids.ids) + specials
    np.testing.assert_allclose(vectors(by_ids), vectors(by_text), atol=1e-6)


async def test_float32_bytes_hold_the_same_vector(minilm: Embeddings) -> None:
    floats = await minilm.embed("bytes or floats")
    raw = await minilm.embed(
        "bytes or floats", encoding=embedding_pb2.EMBEDDING_ENCODING_FLOAT32_BYTES
    )
    assert not raw.embeddings[0].values
    decoded = np.frombuffer(raw.embeddings[0].float32, dtype="<f4")
    assert decoded.tobytes() == vectors(floats)[0].tobytes()


@NARROW
async def test_batches_give_each_input_its_own_vector(
    limited: Embeddings, model: str, specials: int
) -> None:
    """Five inputs of different lengths run as three batches of two, sorted by length: each
    vector is the one the input gets alone, in input order."""
    texts = ["a long sentence about a cat and a dog", "tax", "kitten", "a b c d e", "sofa"]
    together = vectors(await limited.embed(*texts, model=model))
    alone = np.vstack([vectors(await limited.embed(t, model=model)) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


@NARROW
async def test_long_inputs_are_cut_to_the_window_and_marked(
    limited: Embeddings, model: str, specials: int
) -> None:
    long = " ".join(["word"] * 40)
    response = await limited.embed(long, "short", model=model)
    assert [(e.tokens, e.truncated) for e in response.embeddings] == [
        (NARROW_TOKENS, True),
        (1 + specials, False),
    ]
    cut = " ".join(["word"] * (NARROW_TOKENS - specials))
    same = await limited.embed(cut, model=model)
    assert not same.embeddings[0].truncated
    np.testing.assert_allclose(vectors(response)[0], vectors(same)[0], atol=1e-6)


async def test_no_truncation_refuses_long_inputs(limited: Embeddings) -> None:
    call = limited.embed(
        "short", " ".join(["word"] * 40), model="narrow", truncation=embedding_pb2.TRUNCATION_NONE
    )
    code, violations = await refusal(call)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert list(violations) == ["inputs[1]"]
    assert "40 tokens" in violations["inputs[1]"]


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({}, "inputs"),
        ({"inputs": [embedding_pb2.EmbedInput(text="")]}, "inputs[0].text"),
        ({"inputs": [embedding_pb2.EmbedInput()]}, "inputs[0]"),
        (
            {"inputs": [embedding_pb2.EmbedInput(tokens=embedding_pb2.TokenIds())]},
            "inputs[0].tokens",
        ),
        (
            {"inputs": [embedding_pb2.EmbedInput(tokens=embedding_pb2.TokenIds(ids=[7, 10**6]))]},
            "inputs[0].tokens.ids",
        ),
        ({"inputs": [embedding_pb2.EmbedInput(text="x")] * (NARROW_INPUTS + 1)}, "inputs"),
        ({"inputs": [embedding_pb2.EmbedInput(text="x")], "dimensions": 100}, "dimensions"),
        ({"inputs": [embedding_pb2.EmbedInput(text="x")], "encoding": 9}, "encoding"),
        ({"inputs": [embedding_pb2.EmbedInput(text="x")], "truncation": 9}, "truncation"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    limited: Embeddings, request_fields: dict[str, object], field: str
) -> None:
    request = embedding_pb2.EmbedRequest(model="narrow", **request_fields)  # type: ignore[arg-type]
    code, violations = await refusal(limited.call(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations


async def test_unknown_model_is_not_found(limited: Embeddings) -> None:
    code, violations = await refusal(limited.embed("x", model="no-such-model"))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in violations["model"]


async def test_models_are_listed_with_their_kind(limited: Embeddings) -> None:
    listed = await limited.stub.ListModels(
        inference_pb2.InferenceServiceListModelsRequest(), metadata=limited.metadata
    )
    kinds = {m.name: m.kind for m in listed.models}
    assert kinds["narrow"] == kinds["smol-gguf"] == kinds["single"]
    assert kinds["narrow"] == common_pb2.MODEL_KIND_EMBEDDING
    assert (await limited.info("smol-gguf")).engine == "llama.cpp"
    info = await limited.info("narrow")
    assert info.context_size == NARROW_TOKENS
    assert info.details["dimensions"] == 384
    assert info.details["max_inputs"] == NARROW_INPUTS
    assert info.size_bytes > 0


async def running(limited: Embeddings, busy: asyncio.Future[embedding_pb2.EmbedResponse]) -> None:
    """Returns once `single` runs the `busy` request."""
    while not (await limited.info("single")).details["active"]:
        assert not busy.done(), "the busy request ended before it was seen running"
        await asyncio.sleep(0.01)


async def test_full_queue_is_resource_exhausted_with_retry_info(limited: Embeddings) -> None:
    """`single` runs one request and queues none: a second one while it runs is refused."""
    text = " ".join(["busy"] * 250)
    busy = asyncio.ensure_future(limited.embed(*[text] * 64, model="single"))
    await running(limited, busy)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await limited.embed("hi", model="single")
    details = error_details(caught.value)
    assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.reason == "QUEUE_FULL"
    assert details.retry_after is not None and details.retry_after > 0
    assert len((await busy).embeddings) == 64


async def test_a_cancelled_request_frees_its_slot(limited: Embeddings) -> None:
    text = " ".join(["busy"] * 250)
    busy = asyncio.ensure_future(limited.embed(*[text] * 64, model="single"))
    await running(limited, busy)
    busy.cancel()
    for _ in range(3000):
        if not (await limited.info("single")).details["active"]:
            break
        await asyncio.sleep(0.01)
    assert len((await limited.embed("free again", model="single")).embeddings) == 1
