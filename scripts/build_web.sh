#!/usr/bin/env bash
# Builds the web playground (web/) with Vite into $GENMESH_CACHE/web/builds/<hash of the sources>
# and points $GENMESH_CACHE/web/dist (where the edge looks by default) at it. node_modules comes
# from `npm ci` once per package-lock.json and Node version, so a clone reuses both: a warm run
# with unchanged sources does nothing. Prints the built folder.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
web=$root/web
cache=${GENMESH_CACHE:-$HOME/.cache/genmesh}/web
mkdir -p "$cache/deps" "$cache/builds"

hash_of() { sha256sum | cut -c1-16; }

deps_key=$( (node --version; cat "$web/package-lock.json") | hash_of)
sources_key=$(cd "$web" && find . \( -name node_modules -o -name dist \) -prune -o -type f ! -name '*.md' -print \
  | LC_ALL=C sort | xargs sha256sum | (cat; echo "$deps_key") | hash_of)
build=$cache/builds/$sources_key

deps=$cache/deps/$deps_key
if [ ! -d "$deps/node_modules" ]; then
  staging=$(mktemp -d "$cache/deps/.staging.XXXXXX")
  cp "$web/package.json" "$web/package-lock.json" "$staging/"
  (cd "$staging" && npm ci --no-audit --no-fund --silent >&2)
  rm -rf "$deps" && mv "$staging" "$deps"
fi
# Vite and its plugins resolve packages from web/node_modules: a link to the shared copy.
if [ "$(readlink "$web/node_modules" 2>/dev/null)" != "$deps/node_modules" ]; then
  rm -rf "$web/node_modules"
  ln -s "$deps/node_modules" "$web/node_modules"
fi

if [ ! -f "$build/index.html" ]; then
  staging=$(mktemp -d "$cache/builds/.staging.XXXXXX")
  (cd "$web" && node_modules/.bin/vite build --logLevel warn --outDir "$staging" --emptyOutDir >&2)
  rm -rf "$build" && mv "$staging" "$build"
fi
ln -sfn "builds/$sources_key" "$cache/dist"
# The last few builds stay, for edges started on an older one; older ones go.
(cd "$cache/builds" && ls -1t | tail -n +4 | xargs -r rm -rf)
echo "$build"
