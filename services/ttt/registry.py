"""Maps an engine name in the settings to its implementation, importing heavy engines lazily so
a service only loads the libraries its configured models need."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genmesh.runtime.secrets import ProviderSecrets
from genmesh.runtime.settings import ConfigError
from genmesh.ttt.embedding import EmbeddingEngine
from genmesh.ttt.engine import TextEngine
from genmesh.ttt.models import default_gguf, derived_model
from genmesh.ttt.settings import EmbeddingSpec, ModelSpec

ENGINES = ("echo", "llama.cpp", "onnxruntime-genai", "transformers", "openai", "tensorrt-llm")


def create_engine(spec: ModelSpec, secrets: ProviderSecrets) -> TextEngine:
    """The engine of `spec`; remote ones read their keys from `secrets`."""
    options: dict[str, Any] = {"name": spec.name, **spec.options}
    path = Path(spec.path).expanduser() if spec.path else None
    try:
        return _create(spec.engine, path, options, secrets)
    except (FileNotFoundError, TypeError, ConfigError) as exc:
        raise ConfigError(f"ttt.models[{spec.name}]: {exc}") from None


def _create(
    engine: str, path: Path | None, options: dict[str, Any], secrets: ProviderSecrets
) -> TextEngine:
    if engine == "echo":
        from genmesh.ttt.echo import EchoEngine

        return EchoEngine(options["name"])
    if engine == "llama.cpp":
        from genmesh.ttt.llama_engine import LlamaCppEngine

        return LlamaCppEngine(path or default_gguf(), **options)
    if engine == "onnxruntime-genai":
        from genmesh.ttt.onnx_engine import OnnxGenAIEngine

        return OnnxGenAIEngine(path or derived_model("onnx"), **options)
    if engine == "transformers":
        from genmesh.ttt.transformers_engine import TransformersEngine

        return TransformersEngine(path or derived_model("hf"), **options)
    if engine == "openai":
        from genmesh.ttt.openai_engine import OpenAIEngine

        return OpenAIEngine(secrets=secrets, **options)
    if engine == "tensorrt-llm":
        from genmesh.ttt.tensorrt_engine import TensorRTLLMEngine

        if path is None:
            raise FileNotFoundError("tensorrt-llm needs a path to a checkpoint or engine")
        return TensorRTLLMEngine(path, **options)
    raise ConfigError(f"unknown engine '{engine}' (one of {', '.join(ENGINES)})")


def create_embedding_engine(spec: EmbeddingSpec) -> EmbeddingEngine:
    """The embedding engine of `spec`; an empty path takes the embedded all-MiniLM-L6-v2."""
    try:
        if spec.engine == "llama.cpp":
            from genmesh.ttt.embedding_llama import LlamaEmbeddingEngine

            if not spec.path:
                raise FileNotFoundError("llama.cpp needs the path of a GGUF model")
            path = Path(spec.path).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"{path} is not a file")
            return LlamaEmbeddingEngine(spec.name, path, spec.max_tokens, spec.threads)
        from genmesh.ttt.embedding_onnx import OnnxEmbeddingEngine, embedded_model

        if spec.path:
            model = Path(spec.path).expanduser()
            tokenizer = (
                Path(spec.tokenizer).expanduser()
                if spec.tokenizer
                else model.with_name("tokenizer.json")
            )
        else:
            model, tokenizer = embedded_model()
        for path in (model, tokenizer):
            if not path.is_file():
                raise FileNotFoundError(f"{path} is not a file")
        return OnnxEmbeddingEngine(spec.name, model, tokenizer, spec.threads)
    except FileNotFoundError as exc:
        raise ConfigError(f"ttt.embedding_models[{spec.name}]: {exc}") from None
