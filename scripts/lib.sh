# shellcheck shell=bash
# What the scripts that build tools once into $GENMESH_CACHE/bin share; sourced, not run.

# shellcheck disable=SC2034  # used by the scripts that source this
cache_bin=${GENMESH_CACHE:-$HOME/.cache/genmesh}/bin

# llama.cpp's builds (the wheel, llama-server) compile for this machine's CPU, but without AMX:
# a CPU can report it and still fault on the first tile instruction (in a VM that does not keep
# the tile state, ggml's AMX matrix multiply died of a general protection fault on `ldtilecfg`
# while the CPU and the kernel said AMX was there). AVX-512 and VNNI stay.
# shellcheck disable=SC2034
llama_cflags=""
if [ "$(uname -m)" = x86_64 ]; then
  llama_cflags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi

# lock DIR NAME: creates DIR and holds DIR/.NAME.lock until the script ends, so that parallel
# callers (a background `make` target and the tests) wait for one build instead of each starting
# their own.
lock() {
  mkdir -p "$1"
  exec 9>"$1/.$2.lock"
  flock 9
}

# cached_binary NAME VERSION [--path]: for a script that builds one binary, $cache_bin/NAME-VERSION
# (in $bin), and prints its path. With --path it prints the path (where the binary is or would
# be) and ends the script; so it does once the binary is there, built before or by a parallel
# caller. Otherwise it returns, holding the NAME-build lock and with a scratch folder in $work,
# for the script to build it.
cached_binary() {
  bin="$cache_bin/$1-$2"
  if [ "${3:-}" != --path ]; then
    lock "$cache_bin" "$1-build"
    if [ ! -x "$bin" ]; then
      scratch
      return 0
    fi
  fi
  echo "$bin"
  exit 0
}

# scratch: a new temporary folder in $work, removed (read-only files too, as Go's module cache
# leaves them) when the script ends.
scratch() {
  work=$(mktemp -d)
  trap 'chmod -R u+w "$work"; rm -rf "$work"' EXIT
}
