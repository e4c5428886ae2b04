"""Embedding models on the ttt service: the engine interface and the work of one Embed call.

A request is checked against its model before it queues (input count, empty inputs, token ids,
dimensions). Inputs are tokenized, wrapped in the model's special tokens and cut to its window
(or refused, as the request asks), then run in batches of similar length so that little padding
is computed; the vectors are unit length, so cosine similarity is a dot product.
"""

from __future__ import annotations

import abc
import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from genmesh.runtime import errors
from genmesh.runtime.errors import FieldViolation
from genmesh.runtime.limiter import Slots
from genmesh.runtime.timing import Stopwatch
from genmesh.ttt.settings import EmbeddingSpec
from genmesh.v1 import common_pb2, embedding_pb2

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Sequence:
    """One input as the model sees it: token ids with the special tokens, cut to the window."""

    ids: list[int]
    truncated: bool


class EmbeddingEngine(abc.ABC):
    """One loaded embedding model. `encode` blocks (the service runs it in a worker thread)."""

    name: str
    engine: str
    #: Size of the vectors, known once loaded.
    dimensions: int = 0

    @abc.abstractmethod
    async def load(self) -> None:
        """Loads the weights and the tokenizer; called once before the service is SERVING."""

    async def unload(self) -> None:  # noqa: B027 - optional hook
        """Frees the weights; the default has nothing to free."""

    @abc.abstractmethod
    def window(self) -> int:
        """The most tokens one input may have, special tokens included."""

    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Token ids run from 0 to this, exclusive."""

    @abc.abstractmethod
    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids, without special tokens and uncut."""

    @abc.abstractmethod
    def pieces(self, text: str, add_special_tokens: bool) -> list[tuple[int, str]]:
        """Token ids with their text pieces (for the Tokenize RPC)."""

    @abc.abstractmethod
    def detokenize(self, ids: list[int]) -> str:
        """The text of token ids."""

    @abc.abstractmethod
    def specials(self) -> tuple[list[int], list[int]]:
        """The special tokens the model expects before and after an input's tokens."""

    @abc.abstractmethod
    def encode(self, batch: list[list[int]]) -> Vectors:
        """Unit-length vectors, one row per sequence of the batch (each with its special
        tokens and within the window)."""

    def size_bytes(self) -> int:
        """Size of the weights on disk."""
        return 0

    def details(self) -> dict[str, Any]:
        """Engine facts for the model's info."""
        return {}


def vocabulary_violation(
    field: str, ids: list[int], engine: EmbeddingEngine
) -> FieldViolation | None:
    """What is wrong with token ids outside the model's vocabulary, if they are."""
    vocab = engine.vocab_size()
    if all(0 <= i < vocab for i in ids):
        return None
    return FieldViolation(field, f"ids must be in 0..{vocab - 1}")


def checked_inputs(
    request: embedding_pb2.EmbedRequest, engine: EmbeddingEngine, max_inputs: int
) -> list[str | list[int]]:
    """The request's inputs, refused with every field at fault named."""
    if not request.inputs:
        raise errors.invalid_argument(
            "nothing to embed", FieldViolation("inputs", "needs at least one input")
        )
    if len(request.inputs) > max_inputs:
        raise errors.invalid_argument(
            f"too many inputs: {len(request.inputs)}",
            FieldViolation("inputs", f"at most {max_inputs} inputs per request"),
        )
    bad: list[FieldViolation] = []
    if request.dimensions not in (0, engine.dimensions):
        bad.append(
            FieldViolation(
                "dimensions", f"model '{engine.name}' has {engine.dimensions} dimensions only"
            )
        )
    for name, enum in (
        ("truncation", embedding_pb2.Truncation),
        ("encoding", embedding_pb2.EmbeddingEncoding),
    ):
        if getattr(request, name) not in enum.values():
            bad.append(FieldViolation(name, f"must be one of {', '.join(enum.keys())}"))
    inputs: list[str | list[int]] = []
    for index, item in enumerate(request.inputs):
        kind = item.WhichOneof("content")
        if kind == "text" and item.text:
            inputs.append(item.text)
        elif kind == "tokens" and item.tokens.ids:
            ids = list(item.tokens.ids)
            outside = vocabulary_violation(f"inputs[{index}].tokens.ids", ids, engine)
            if outside:
                bad.append(outside)
            inputs.append(ids)
        else:
            field = f"inputs[{index}].{kind}" if kind else f"inputs[{index}]"
            bad.append(FieldViolation(field, "must not be empty"))
    if bad:
        raise errors.invalid_argument("invalid embedding request", *bad)
    return inputs


class Embedder:
    """An embedding engine with its admission control and request limits."""

    def __init__(self, engine: EmbeddingEngine, spec: EmbeddingSpec) -> None:
        self.engine = engine
        self.spec = spec
        self.slots: Slots = spec.slots(spec.name)

    def window(self) -> int:
        return min(self.spec.max_tokens, self.engine.window())

    def sequences(
        self, inputs: list[str | list[int]], truncation: embedding_pb2.Truncation.ValueType
    ) -> list[Sequence]:
        """Each input wrapped in the special tokens and cut to the window (or refused)."""
        texts = [i for i in inputs if isinstance(i, str)]
        tokenized = iter(self.engine.tokenize(texts))
        before, after = self.engine.specials()
        room = self.window() - len(before) - len(after)
        sequences = []
        too_long: list[FieldViolation] = []
        for index, item in enumerate(inputs):
            ids = next(tokenized) if isinstance(item, str) else item
            if len(ids) > room and truncation == embedding_pb2.TRUNCATION_NONE:
                too_long.append(
                    FieldViolation(
                        f"inputs[{index}]",
                        f"has {len(ids)} tokens; the model takes {room} (truncation is NONE)",
                    )
                )
            sequences.append(Sequence([*before, *ids[:room], *after], len(ids) > room))
        if too_long:
            raise errors.invalid_argument("inputs longer than the model's window", *too_long)
        return sequences

    def run(self, sequences: list[Sequence], stop: threading.Event) -> Vectors:
        """The vectors in input order, computed in batches of inputs of similar length; once
        `stop` is set no further batch starts (the rows left are garbage)."""
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i].ids))
        vectors = np.empty((len(sequences), self.engine.dimensions), dtype=np.float32)
        size = self.spec.batch_size
        for start in range(0, len(order), size):
            if stop.is_set():
                break
            chosen = order[start : start + size]
            vectors[chosen] = self.engine.encode([sequences[i].ids for i in chosen])
        return vectors

    async def vectors(self, sequences: list[Sequence], clock: Stopwatch) -> Vectors:
        """`run` in a worker thread, holding a slot until the thread is done: a cancelled call
        stops it after the batch under way, and only then frees its slot."""
        async with self.slots.slot():
            clock.dequeued()
            stop = threading.Event()
            work = asyncio.ensure_future(asyncio.to_thread(self.run, sequences, stop))
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                stop.set()
                await work
                raise

    async def embed(self, request: embedding_pb2.EmbedRequest) -> embedding_pb2.EmbedResponse:
        clock = Stopwatch()
        inputs = checked_inputs(request, self.engine, self.spec.max_inputs)
        sequences = await asyncio.to_thread(self.sequences, inputs, request.truncation)
        vectors = await self.vectors(sequences, clock)
        as_bytes = request.encoding == embedding_pb2.EMBEDDING_ENCODING_FLOAT32_BYTES
        embeddings = []
        for index, (vector, sequence) in enumerate(zip(vectors, sequences, strict=True)):
            embedding = embedding_pb2.Embedding(
                index=index, tokens=len(sequence.ids), truncated=sequence.truncated
            )
            if as_bytes:
                embedding.float32 = vector.astype("<f4").tobytes()
            else:
                embedding.values.extend(vector.tolist())
            embeddings.append(embedding)
        tokens = sum(len(s.ids) for s in sequences)
        return embedding_pb2.EmbedResponse(
            request_id=request.request_id,
            model=self.engine.name,
            embeddings=embeddings,
            dimensions=self.engine.dimensions,
            usage=common_pb2.Usage(prompt_tokens=tokens, total_tokens=tokens),
            timings=clock.timings(),
        )

    def info(self) -> common_pb2.ModelInfo:
        info = common_pb2.ModelInfo(
            name=self.engine.name,
            engine=self.engine.engine,
            kind=common_pb2.MODEL_KIND_EMBEDDING,
            context_size=self.window(),
            loaded=True,
            size_bytes=self.engine.size_bytes(),
        )
        info.details.update(
            {
                **self.engine.details(),
                "dimensions": self.engine.dimensions,
                "normalized": True,
                "max_inputs": self.spec.max_inputs,
                "batch_size": self.spec.batch_size,
                "concurrency": self.slots.concurrency,
                "active": self.slots.active,
                "queued": self.slots.waiting,
            }
        )
        return info
