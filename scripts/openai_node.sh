#!/usr/bin/env bash
# Installs the official `openai` Node SDK from npm into a cached folder ($GENMESH_CACHE/npm/openai
# by default) for the edge's Node client test; a warm run only checks the pinned version.
# Prints the folder whose node_modules holds the SDK. Usage: scripts/openai_node.sh [folder]
set -euo pipefail
# The newest major whose SDK still runs on Node 20 (7.x needs Node 22).
sdk=openai@6.49.0
dir=${1:-${GENMESH_CACHE:-$HOME/.cache/genmesh}/npm/openai}
mkdir -p "$dir"
if [ ! -f "$dir/node_modules/openai/package.json" ] || [ "$(cat "$dir/.version" 2>/dev/null)" != "$sdk" ]; then
	npm install --silent --no-audit --no-fund --prefix "$dir" "$sdk" >/dev/null
	echo "$sdk" >"$dir/.version"
fi
echo "$dir"
