#!/usr/bin/env bash
# Builds the llama-cpp-python wheel (a ~10 minute C++ compile on 2 cores) into the wheel cache,
# only when no wheel of that version is there yet; pip then installs it with --find-links.
# Usage: scripts/build_llama_wheel.sh PYTHON WHEEL_DIR
set -euo pipefail
python=$1
wheels=$2
version=0.3.36
mkdir -p "$wheels"
if compgen -G "$wheels/llama_cpp_python-$version-*.whl" >/dev/null; then
  exit 0
fi
echo "building llama-cpp-python $version (cached in $wheels afterwards)" >&2
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip wheel -q --no-deps --no-binary llama-cpp-python -w "$tmp" "llama-cpp-python==$version"
mv "$tmp"/llama_cpp_python-*.whl "$wheels/"
