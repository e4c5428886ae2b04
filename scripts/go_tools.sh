#!/usr/bin/env bash
# Installs the pinned protoc plugins that generate the gateway's Go code and OpenAPI document into
# .cache/bin, from the Go module proxy. A plugin already built at its pinned version is kept, so a
# warm run costs only a version check.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOBIN="$PWD/.cache/bin" GOFLAGS=-buildvcs=false
mkdir -p "$GOBIN"

plugins=(
  "google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12"
  "google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2"
  "github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-grpc-gateway@v2.32.0"
  "github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2@v2.32.0"
)
for plugin in "${plugins[@]}"; do
  pkg=${plugin%@*} version=${plugin##*@}
  bin="$GOBIN/${pkg##*/}"
  if [ -x "$bin" ] && go version -m "$bin" | grep -q "^[[:space:]]mod[[:space:]].*[[:space:]]$version[[:space:]]"; then
    continue
  fi
  go install "$plugin"
done
