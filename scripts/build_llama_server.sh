#!/usr/bin/env bash
# Builds llama.cpp's own `llama-server` (CPU only) into $GENMESH_CACHE/bin, once, and prints its
# path: the baseline bench/ttt_throughput.py measures ttt against. It is compiled from the
# llama.cpp source that llama-cpp-python's sdist vendors (vendor/llama.cpp), of the same version
# as the wheel scripts/build_llama_wheel.sh builds, so both sides run the same kernels. The sdist
# comes from PyPI, the one place the source is reachable from. A cold build is ~10 minutes on
# 2 cores; a warm run only checks that the binary is there. Only llama-cpp-python itself comes as
# source: its build backend (needed to read its metadata) installs from wheels.
# Usage: scripts/build_llama_server.sh [--path]  (--path prints where it is or would be, only)
set -euo pipefail
version=0.3.36
python=${PYTHON:-python3}
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cached_binary llama-server "$version${llama_cflags:+-noamx}" "$@"
echo "building llama-server from llama-cpp-python $version's llama.cpp (one time, ~10 min)" >&2
"$python" -m pip download -q --no-binary llama-cpp-python --no-deps -d "$work" "llama-cpp-python==$version"
tar -xzf "$work/llama_cpp_python-$version.tar.gz" -C "$work"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
# Static, so the binary needs none of the build's shared libraries; no libcurl: models are
# local files. GGML's other options keep their defaults, and the compiler flags are the wheel's.
export CFLAGS="$llama_cflags" CXXFLAGS="$llama_cflags"
cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >&2
cmake --build "$work/build" --target llama-server -j "${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" >&2
install -m 755 "$work/build/bin/llama-server" "$bin.tmp"
mv "$bin.tmp" "$bin"
echo "$bin"
