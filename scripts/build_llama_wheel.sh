#!/usr/bin/env bash
# Builds the llama-cpp-python wheel (a ~10 minute C++ compile on 2 cores) into the wheel cache,
# only when no wheel of that version built with today's compiler flags is there yet; pip then
# installs it with --find-links.
# Usage: scripts/build_llama_wheel.sh PYTHON WHEEL_DIR
set -euo pipefail
python=$1
wheels=$2
version=0.3.36
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
lock "$wheels" llama-wheel
# The flags a cached wheel was built with; a wheel built with others is built again.
flags_file="$wheels/llama_cpp_python-$version.cflags"
if compgen -G "$wheels/llama_cpp_python-$version-*.whl" >/dev/null \
  && [ "$(cat "$flags_file" 2>/dev/null)" = "$llama_cflags" ]; then
  exit 0
fi
echo "building llama-cpp-python $version (cached in $wheels afterwards)" >&2
rm -f "$wheels"/llama_cpp_python-"$version"-*.whl
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
export CFLAGS="$llama_cflags" CXXFLAGS="$llama_cflags"
scratch
# Not from pip's cache of wheels it built: that one is keyed by the source, not by the flags.
"$python" -m pip wheel -q --no-cache-dir --no-deps --no-binary llama-cpp-python -w "$work" "llama-cpp-python==$version"
mv "$work"/llama_cpp_python-*.whl "$wheels/"
echo "$llama_cflags" >"$flags_file"
