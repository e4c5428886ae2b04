# shellcheck shell=bash
# What the scripts that build tools once into $GENMESH_CACHE/bin share; sourced, not run.

# shellcheck disable=SC2034  # used by the scripts that source this
cache_bin=${GENMESH_CACHE:-$HOME/.cache/genmesh}/bin

# lock DIR NAME: creates DIR and holds DIR/.NAME.lock until the script ends, so that parallel
# callers (a background `make` target and the tests) wait for one build instead of each starting
# their own.
lock() {
  mkdir -p "$1"
  exec 9>"$1/.$2.lock"
  flock 9
}

# cached_binary BIN LOCK [--path]: for a script that builds one binary and prints its path. With
# --path it prints BIN (where it is or would be) and ends the script; so it does once BIN is there,
# built before or by a parallel caller. Otherwise it returns, holding LOCK, for the script to build
# BIN.
cached_binary() {
  if [ "${3:-}" != --path ]; then
    lock "$(dirname "$1")" "$2"
    [ -x "$1" ] || return 0
  fi
  echo "$1"
  exit 0
}
