#!/usr/bin/env bash
# Builds ghz, the gRPC load tool bench/ghz.py drives, from the Go module proxy into
# $GENMESH_CACHE/bin, once, and prints its path (about a minute cold). With --path it only prints
# where the binary is or would be.
set -euo pipefail
version=v0.93.0
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cached_binary ghz "$version" "$@"
echo "building ghz $version from the Go module proxy (one time)" >&2
GOBIN="$work" CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
  go install -trimpath -ldflags=-s "github.com/bojand/ghz/cmd/ghz@$version"
mv "$work/ghz" "$bin"
echo "$bin"
