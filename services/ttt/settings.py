"""Settings of the ttt service: which models to load, with which engine, and how many requests
each may run and queue."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from genmesh.runtime.limiter import Slots
from genmesh.runtime.settings import ServiceSettings, choose_default

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
# A llama.cpp model's concurrency (its batching slots) unless set: four streams gave 1.7x one
# stream's tokens/s on 2 cores, as much as llama-server at four (bench/README.md, ttt_throughput),
# while each slot reserves its whole KV cache; llama-server's own default is four slots too.
DEFAULT_LLAMA_SLOTS = 4


class Admission(BaseModel):
    """How many requests a model runs at once; more wait in a queue of queue_size for
    queue_timeout_seconds, and beyond that get RESOURCE_EXHAUSTED with a retry delay."""

    concurrency: int = Field(default=1, ge=1)
    queue_size: int = Field(default=64, ge=0)
    queue_timeout_seconds: float = Field(default=60.0, gt=0)

    def slots(self, name: str) -> Slots:
        return Slots(name, self.concurrency, self.queue_size, self.queue_timeout_seconds)


class ModelSpec(Admission):
    """One model the service serves."""

    name: str = Field(min_length=1)
    # echo, llama.cpp, onnxruntime-genai, transformers, openai or tensorrt-llm.
    engine: str = "echo"
    # A GGUF file or model folder; empty takes the embedded SmolLM2 in the engine's format.
    path: str = ""
    # Engine-specific keyword arguments (context_size, threads, base_url, ...); a remote engine's
    # key is named by api_key_secret, a provider secret (see genmesh.runtime.secrets).
    options: dict[str, Any] = {}
    # Used when a request brings no system context (personality or input); empty keeps the
    # chat template's own default. Small quantised models answer better with a plain one.
    system_prompt: str = ""

    @model_validator(mode="after")
    def _slots_follow_concurrency(self) -> ModelSpec:
        """llama.cpp batches the requests it runs at once: one slot (a sequence in the shared
        decode step, with its own `context_size`) per admitted request, so the service's queue is
        the only place a request waits. `options.slots` may say otherwise explicitly."""
        if self.engine == "llama.cpp":
            if "concurrency" not in self.model_fields_set:
                self.concurrency = DEFAULT_LLAMA_SLOTS
            self.options = {"slots": self.concurrency, **self.options}
        return self


class EmbeddingSpec(Admission):
    """One embedding model the service serves."""

    name: str = Field(default=DEFAULT_EMBEDDING_MODEL, min_length=1)
    # onnxruntime: an ONNX encoder (a last_hidden_state output), mean-pooled and normalised as
    # sentence-transformers does; llama.cpp: a GGUF model, pooled as its metadata says.
    engine: Literal["onnxruntime", "llama.cpp"] = "onnxruntime"
    # The ONNX or GGUF file; empty takes the embedded all-MiniLM-L6-v2 (int8 ONNX).
    path: str = ""
    # Its tokenizer.json (Hugging Face tokenizers); empty looks beside the model file.
    tokenizer: str = ""
    # Tokens per input, special tokens included (at most the model's own window).
    max_tokens: int = Field(default=256, ge=2)
    # Inputs one request may carry, and inputs run through the model at once.
    max_inputs: int = Field(default=256, ge=1)
    batch_size: int = Field(default=32, ge=1)
    # CPU threads for the model; 0 lets the engine choose.
    threads: int = Field(default=0, ge=0)


class TttSettings(ServiceSettings):
    service_name: ClassVar[str] = "ttt"

    port: int = Field(default=50052, ge=0, le=65535)
    models: list[ModelSpec] = [ModelSpec(name="echo", engine="echo")]
    default_model: str = ""
    # Served by Embed; the first is the default. Empty serves none.
    embedding_models: list[EmbeddingSpec] = [EmbeddingSpec()]
    # Scanned for GGUF files, onnxruntime-genai and Hugging Face folders, listed by ListModels.
    models_dir: Path | None = None

    @model_validator(mode="after")
    def _default_is_known(self) -> TttSettings:
        self.default_model = choose_default([m.name for m in self.models], self.default_model)
        names = [m.name for m in self.models] + [m.name for m in self.embedding_models]
        clashes = sorted({n for n in names if names.count(n) > 1})
        if clashes:
            raise ValueError(f"models and embedding_models: duplicate names {clashes}")
        return self
