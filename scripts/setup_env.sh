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
"${pip[@]}" install -q --find-links "$cache/wheels" -e '.[all,dev]'
