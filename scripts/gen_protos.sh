#!/usr/bin/env bash
# The one command that regenerates every stub from protos/: Python (services/v1) and, when the
# gateway module exists, Go and the OpenAPI document. Never edit the output by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PATH="$PWD/.venv/bin:$PWD/.cache/bin:$PWD/.cache/tools/node_modules/.bin:$PATH"

deps=.cache/protodeps
"$PY" scripts/protodeps.py "$deps"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m grpc_tools.protoc -I protos -I "$deps" \
  --python_out="$tmp" --grpc_python_out="$tmp" --mypy_out="$tmp" --mypy_grpc_out="$tmp" \
  protos/genmesh/v1/*.proto
rm -rf services/v1
mv "$tmp/genmesh/v1" services/v1
printf '"""Generated from protos/genmesh/v1 by scripts/gen_protos.sh; do not edit."""\n' > services/v1/__init__.py

if [ -f services/gateway/go.mod ]; then
  scripts/go_tools.sh
  buf generate
fi
