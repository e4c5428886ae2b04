"""Settings of the ttt service: which models to load, with which engine, and how many requests
each may run and queue."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field, model_validator

from genmesh.runtime.settings import ServiceSettings, choose_default


class ModelSpec(BaseModel):
    """One model the service serves."""

    name: str = Field(min_length=1)
    # echo, llama.cpp, onnxruntime-genai, transformers, openai or tensorrt-llm.
    engine: str = "echo"
    # A GGUF file or model folder; empty takes the embedded SmolLM2 in the engine's format.
    path: str = ""
    # Engine-specific keyword arguments (context_size, threads, base_url, ...); a remote engine's
    # key is named by api_key_secret, a provider secret (see genmesh.runtime.secrets).
    options: dict[str, Any] = {}
    # Generations running at once; more wait in a queue of queue_size for queue_timeout_seconds.
    concurrency: int = Field(default=1, ge=1)
    queue_size: int = Field(default=64, ge=0)
    queue_timeout_seconds: float = Field(default=60.0, gt=0)
    # Used when a request brings no system context (personality or input); empty keeps the
    # chat template's own default. Small quantised models answer better with a plain one.
    system_prompt: str = ""


class TttSettings(ServiceSettings):
    service_name: ClassVar[str] = "ttt"

    port: int = Field(default=50052, ge=0, le=65535)
    models: list[ModelSpec] = [ModelSpec(name="echo", engine="echo")]
    default_model: str = ""
    # Scanned for GGUF files, onnxruntime-genai and Hugging Face folders, listed by ListModels.
    models_dir: Path | None = None

    @model_validator(mode="after")
    def _default_is_known(self) -> TttSettings:
        self.default_model = choose_default([m.name for m in self.models], self.default_model)
        return self
