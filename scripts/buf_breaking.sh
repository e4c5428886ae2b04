#!/usr/bin/env bash
# buf breaking (FILE) against main. On main itself this compares with the previous commit, so a
# change that lands still gets checked against what was there before it.
set -euo pipefail
cd "$(dirname "$0")/.."
buf=$1
branch=$(git rev-parse --abbrev-ref HEAD)
if [ "$branch" = main ] || [ "$branch" = HEAD ]; then ref=HEAD~1; else ref=main; fi
if ! git rev-parse -q --verify "$ref" >/dev/null || ! git cat-file -e "$ref:protos" 2>/dev/null; then
  echo "buf breaking: no protos at $ref to compare against"; exit 0
fi
against=$(mktemp -d)
trap 'rm -rf "$against"' EXIT
git archive "$ref" protos buf.yaml | tar -x -C "$against"
mkdir -p "$against/.cache"
cp -r .cache/protodeps "$against/.cache/protodeps"
"$buf" breaking --against "$against"
