"""GGUF embedding models on llama.cpp (llama-cpp-python with `embedding=True`).

A model is pooled as its GGUF metadata says (`<arch>.pooling_type`: mean or CLS for BERT-style
encoders, last token for some decoders), or mean-pooled when it says nothing (a plain decoder),
then L2-normalised here. Sequences are packed into one llama.cpp batch up to `PACKED_TOKENS`,
each under its own sequence id so that each is pooled alone, and the memory is cleared between
batches. `Llama.embed` would re-tokenize text, which would lose token-array inputs and the
truncation flag, hence llama-cpp-python's batch and context objects (as its `embed` uses them).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genmesh.ttt.embedding import EmbeddingEngine, Vectors
from genmesh.ttt.llama_engine import default_threads

if TYPE_CHECKING:
    from llama_cpp import Llama

#: Tokens decoded at once: several short inputs, or one input up to the window.
PACKED_TOKENS = 1024


def declared_pooling(path: Path) -> int | None:
    """The pooling type the GGUF file declares, if any."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    arch = fields.get("general.architecture")
    if arch is None:
        return None
    declared = fields.get(f"{arch.contents()}.pooling_type")
    return int(declared.contents()) if declared is not None else None


class LlamaEmbeddingEngine(EmbeddingEngine):
    engine = "llama.cpp"

    def __init__(self, name: str, path: Path, max_tokens: int, threads: int = 0) -> None:
        self.name = name
        self._path = path
        self._window = max_tokens
        self._threads = threads or default_threads()
        self._llm: Llama | None = None
        self._specials: tuple[list[int], list[int]] = ([], [])
        # One context: batches are decoded one at a time, whatever the model's concurrency.
        self._lock = threading.Lock()

    async def load(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        from llama_cpp import LLAMA_POOLING_TYPE_MEAN, Llama

        pooling = declared_pooling(self._path)
        size = max(self._window, PACKED_TOKENS)
        llm = Llama(
            model_path=str(self._path),
            embedding=True,
            pooling_type=LLAMA_POOLING_TYPE_MEAN if pooling is None else pooling,
            n_ctx=size,
            n_batch=size,
            n_ubatch=size,
            n_threads=self._threads,
            n_threads_batch=self._threads,
            verbose=False,
        )
        self._window = min(self._window, llm._model.n_ctx_train())
        self._llm = llm
        bare = llm.tokenize(b"a", add_bos=False)
        full = llm.tokenize(b"a", add_bos=True)
        start = next((i for i in range(len(full)) if full[i : i + len(bare)] == bare), len(full))
        self._specials = full[:start], full[start + len(bare) :]
        self.dimensions = llm.n_embd()

    async def unload(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            await asyncio.to_thread(llm.close)

    def _loaded(self) -> Llama:
        if self._llm is None:
            raise RuntimeError(f"embedding model {self.name} is not loaded")
        return self._llm

    def window(self) -> int:
        return self._window

    def vocab_size(self) -> int:
        return int(self._loaded().n_vocab())

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        llm = self._loaded()
        return [llm.tokenize(text.encode(), add_bos=False) for text in texts]

    def pieces(self, text: str, add_special_tokens: bool) -> list[tuple[int, str]]:
        llm = self._loaded()
        ids = llm.tokenize(text.encode(), add_bos=add_special_tokens)
        return [(i, llm.detokenize([i]).decode(errors="replace")) for i in ids]

    def detokenize(self, ids: list[int]) -> str:
        return self._loaded().detokenize(ids).decode(errors="replace")

    def specials(self) -> tuple[list[int], list[int]]:
        return self._specials

    def encode(self, batch: list[list[int]]) -> Vectors:
        llm = self._loaded()
        rows: list[Any] = []
        with self._lock:
            packed: list[list[int]] = []
            for sequence in batch:
                if packed and sum(map(len, packed)) + len(sequence) > llm.n_batch:
                    rows += self._decode(llm, packed)
                    packed = []
                packed.append(sequence)
            rows += self._decode(llm, packed)
        pooled = np.array(rows, dtype=np.float32)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        vectors: Vectors = pooled / np.maximum(norms, 1e-12)
        return vectors

    @staticmethod
    def _decode(llm: Llama, packed: list[list[int]]) -> list[Any]:
        from llama_cpp import llama_get_embeddings_seq

        # llama-cpp-python's internal wrappers, untyped.
        context: Any = llm._ctx
        batch: Any = llm._batch
        context.kv_cache_clear()
        batch.reset()
        for seq_id, sequence in enumerate(packed):
            batch.add_sequence(sequence, seq_id, True)
        context.decode(batch)
        size = llm.n_embd()
        return [llama_get_embeddings_seq(context.ctx, i)[:size] for i in range(len(packed))]

    def size_bytes(self) -> int:
        return self._path.stat().st_size

    def details(self) -> dict[str, Any]:
        return {"path": str(self._path), "pooling": self._loaded().pooling_type()}
