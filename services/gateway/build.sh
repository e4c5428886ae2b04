#!/usr/bin/env bash
# Builds the REST gateway into .cache/bin/genmesh-gateway and prints its path. Go's build cache
# makes a repeat build take about a second, so callers (tests, `genmesh up`) simply run this first.
set -euo pipefail
cd "$(dirname "$0")"
out="$(cd ../.. && pwd)/.cache/bin/genmesh-gateway"
mkdir -p "$(dirname "$out")"
GOFLAGS=-buildvcs=false go build -trimpath -o "$out" .
echo "$out"
