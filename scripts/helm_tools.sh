#!/usr/bin/env bash
# Builds the chart tools from the Go module proxy and caches the binaries in $GENMESH_CACHE/bin:
# helm (lint, template) and kube-score (policy lint; kube-linter's vanity module path,
# golang.stackrox.io, is not served by the module proxy this project relies on). Pinned versions;
# a warm run only checks files.
# Prints nothing on success, so `make` output stays quiet. Usage: scripts/helm_tools.sh [bin-dir]
set -euo pipefail
HELM_VERSION=v3.22.0
KUBE_SCORE_VERSION=v1.20.0
bin=${1:-${GENMESH_CACHE:-$HOME/.cache/genmesh}/bin}
mkdir -p "$bin"

build() { # name module version
	local target="$bin/$1-$3"
	if [ ! -x "$target" ]; then
		local tmp
		tmp=$(mktemp -d)
		GOBIN="$tmp" CGO_ENABLED=0 go install -trimpath -ldflags=-s "$2@$3"
		mv "$tmp/$1" "$target"
		rmdir "$tmp"
	fi
	ln -sfn "$1-$3" "$bin/$1"
}

build helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
build kube-score github.com/zegl/kube-score/cmd/kube-score "$KUBE_SCORE_VERSION"

# Bitnami's readme-generator writes the chart README's parameter tables from values.yaml's @param
# comments (and fails on a value without one).
readme_generator=@bitnami/readme-generator-for-helm@2.7.2
npm_dir="$bin/../npm"
if [ ! -x "$npm_dir/node_modules/.bin/readme-generator" ] || [ "$(cat "$npm_dir/.version" 2>/dev/null)" != "$readme_generator" ]; then
	npm install --silent --no-audit --no-fund --prefix "$npm_dir" "$readme_generator" >/dev/null
	echo "$readme_generator" >"$npm_dir/.version"
fi
ln -sfn ../npm/node_modules/.bin/readme-generator "$bin/readme-generator"
