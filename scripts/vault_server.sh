#!/usr/bin/env bash
# Builds a Vault-compatible server for the secrets tests into $GENMESH_CACHE/bin, once, and prints
# its path. A binary named by GENMESH_VAULT_BIN (e.g. a packaged `bao` or `vault`) is used instead.
#
# OpenBao would be the natural choice, but it cannot come from the Go module proxy: its server
# module (github.com/openbao/openbao) is not served there (HTTP 403 for every version and for
# @v/list, likewise sdk/v2 and go-kms-wrapping/v2); on the public proxy its v2.x tags are not valid
# versions of a module path without /v2 (only commit pseudo-versions are), and its go.mod's replace
# directives make `go install` refuse it. HashiCorp Vault's module is served with all of its
# dependencies, so we build that (BUSL-1.1: used here only as a local test server, not shipped).
# Its go.mod points its api and sdk modules at ./api and ./sdk, which the module zip leaves out, so
# `go install` refuses it: we copy the source out of the module cache, drop those replaces to use
# the published api and sdk versions it already requires, and `go build`. It
# compiles ~2,600 packages: 38 min on 2 busy cores here, with part of the tree already cached.
# With --path it only prints where the binary is or would be, without building.
set -euo pipefail
if [ -n "${GENMESH_VAULT_BIN:-}" ]; then
  echo "$GENMESH_VAULT_BIN"
  exit 0
fi
# The newest release whose tree matches the api and sdk releases its go.mod requires (1.21.4's
# tree is ahead of sdk v0.20.0 and behind v0.21.0, so it compiles against neither).
version=v1.21.0
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cached_binary vault "$version" "$@"
echo "building the Vault $version server from the Go module proxy (one time, several minutes)" >&2
cd "$work"
src=$(go mod download -json "github.com/hashicorp/vault@$version" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
cp -r "$src" vault && chmod -R u+w vault
cd vault
go mod edit \
  -dropreplace github.com/hashicorp/vault/api \
  -dropreplace github.com/hashicorp/vault/api/auth/approle \
  -dropreplace github.com/hashicorp/vault/api/auth/kubernetes \
  -dropreplace github.com/hashicorp/vault/api/auth/userpass \
  -dropreplace github.com/hashicorp/vault/sdk
GOFLAGS="-mod=mod -buildvcs=false" go build -trimpath -ldflags="-s -w" -o "$bin.tmp" .
mv "$bin.tmp" "$bin"
echo "$bin"
