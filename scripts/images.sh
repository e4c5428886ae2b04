#!/usr/bin/env bash
# Builds the genmesh images with podman from images/Dockerfile, tagged as the chart names them
# (ghcr.io/genmesh/<service>:<appVersion>), and prints each one's size.
# Usage: scripts/images.sh [SERVICE...]   (default: every service)
#
# - An image whose inputs (Dockerfile, package sources, base, wheels) did not change since its last
#   build is kept: their hash is a label of the image, so a warm run takes seconds.
# - When the registry's python base cannot be pulled, a Debian bookworm base is made with
#   debootstrap (about 2 minutes, once) and imported; it trusts the host's extra CA certificates so
#   that build steps reach the package registries through the same network as the host.
# - Slow parts come from the caches under $GENMESH_CACHE: the llama.cpp wheel (wheels/), baked
#   models when GENMESH_BAKE_MODELS=1 (models/), and Go's module and build caches for the gateway.
# - Builds run as root: rootless podman has no network on hosts without /dev/net/tun.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export CONTAINERS_CONF=${CONTAINERS_CONF:-$root/images/containers.conf}
cache=${GENMESH_CACHE:-$HOME/.cache/genmesh}
registry=${GENMESH_IMAGE_REGISTRY:-ghcr.io/genmesh}
version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/genmesh/Chart.yaml)
python_image=${PYTHON_IMAGE:-python:3.11.14-slim-bookworm}
go_image=${GO_IMAGE:-golang:1.26.8-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
all=(router ttt tti audio sandbox edge gateway)
if [ $# -gt 0 ]; then services=("$@"); else services=("${all[@]}"); fi
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

install_tools() {
  local missing=()
  for tool in podman buildah runc debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc debootstrap >/dev/null
  fi
}

hash_files() {
  # The content of every file under the given paths, independent of timestamps and caches.
  find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z \
    | xargs -0 sha256sum | sha256sum | cut -c1-16
}

label_of() {
  podman image inspect --format '{{index .Labels "io.genmesh.inputs"}}' "$1" 2>/dev/null || true
}

# A Debian bookworm root filesystem with Python, imported as an image: the stand-in for the
# registry's python image where no registry is reachable.
debian_base() {
  local packages=python3,python3-venv,python3-pip,python-is-python3,ca-certificates
  local cas=(/usr/local/share/ca-certificates/*.crt)
  local tag
  tag=localhost/genmesh-base:bookworm-$(
    { echo "$packages $mirror"; sed -n '/^debian_base()/,/^}/p' "$0"; cat "${cas[@]}" 2>/dev/null; } \
      | sha256sum | cut -c1-16
  )
  if ! podman image exists "$tag"; then
    echo "making $tag with debootstrap" >&2
    local dir
    dir=$(mktemp -d /var/tmp/genmesh-base.XXXXXX)
    debootstrap --variant=minbase --include="$packages" bookworm "$dir" "$mirror" >"$logs/base.log" \
      || { tail -20 "$logs/base.log" >&2; rm -rf "$dir"; return 1; }
    cp "${cas[@]}" "$dir/usr/local/share/ca-certificates/" 2>/dev/null || true
    chroot "$dir" update-ca-certificates >/dev/null
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s-security bookworm-security main\n' \
      "$mirror" "$mirror" "${mirror%/debian}/debian" >"$dir/etc/apt/sources.list"
    chroot "$dir" apt-get clean
    rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/* "$dir"/var/log/*.log
    tar -C "$dir" -c . | podman import -q --change 'CMD ["python3"]' - "$tag" >/dev/null
    rm -rf "$dir"
  fi
  echo "$tag"
}

# The images to build on: the pinned registry images when they can be pulled, else the Debian base
# (with the host's Go toolchain mounted in for the gateway's build stage).
choose_bases() {
  go_mounts=()
  if podman image exists "$python_image" || podman pull -q "$python_image" >/dev/null 2>&1; then
    python_base=$python_image
  else
    python_base=$(debian_base)
  fi
  if podman image exists "$go_image" || podman pull -q "$go_image" >/dev/null 2>&1; then
    go_base=$go_image
  else
    go_base=$python_base
    local goroot
    goroot=$(go env GOROOT)
    go_mounts=(-v "$goroot:/usr/local/go:ro")
  fi
  go_mounts+=(-v "$(go env GOMODCACHE):/root/go/pkg/mod" -v "$(go env GOCACHE):/root/.cache/go-build")
}

inputs_of() {
  local service=$1 base_id
  base_id=$(podman image inspect --format '{{.Id}}' "$python_base")
  {
    echo "$service $version $base_id $(hash_files images/Dockerfile .dockerignore)"
    if [ "$service" = gateway ]; then
      podman image inspect --format '{{.Id}}' "$go_base"
      go version
      hash_files services/gateway
    else
      hash_files pyproject.toml README.md services
      [ "$service" != ttt ] || hash_files "$cache/wheels"
      [ "${GENMESH_BAKE_MODELS:-0}" != 1 ] || hash_files "$cache/models"
      # The playground's build folder is named by the hash of its sources.
      [ "$service" != edge ] || echo "$web"
    fi
  } | sha256sum | cut -c1-16
}

build() {
  local service=$1 ref=$registry/$1:$version inputs start
  inputs=$(inputs_of "$service")
  if [ "$(label_of "$ref")" = "$inputs" ]; then
    echo "$service up to date" >&2
    echo "$service cached 0" >"$logs/$service.result"
    return 0
  fi
  start=$SECONDS
  local args=(--target "$service" --label "io.genmesh.inputs=$inputs" -t "$ref"
    --build-arg "PYTHON_IMAGE=$python_base" --build-arg "GO_IMAGE=$go_base"
    --build-context "wheels=$cache/wheels")
  [ "$service" != gateway ] || args+=("${go_mounts[@]}")
  [ "${GENMESH_BAKE_MODELS:-0}" != 1 ] || args+=(--build-context "models=$cache/models")
  [ "$service" != edge ] || args+=(--build-context "web=$web")
  echo "building $ref" >&2
  if ! podman build -f images/Dockerfile "${args[@]}" . >"$logs/$service.log" 2>&1; then
    echo "building $service failed:" >&2
    tail -40 "$logs/$service.log" >&2
    return 1
  fi
  echo "$service built $((SECONDS - start))" >"$logs/$service.result"
}

# Builds one lane of services in order (stages shared within a lane are built once).
lane() {
  local service
  for service in "$@"; do
    build "$service" || return 1
  done
}

if [ "$(id -u)" != 0 ]; then
  echo "scripts/images.sh builds as root: rootless podman has no network here" >&2
  exit 1
fi
install_tools
mkdir -p "$cache/wheels"
scripts/build_llama_wheel.sh python3 "$cache/wheels"
choose_bases
start=$SECONDS
want() { [[ " ${services[*]} " == *" $1 "* ]]; }
# The edge serves the web playground: built (or found in the cache) before the edge's image.
web=""
if want edge; then web=$(readlink -f "$(scripts/build_web.sh)"); fi
# The router first builds the stages every Python image shares; then two lanes in parallel (two
# cores): the torch-based images, which share their torch stage, and the rest.
failed=0
if want router; then lane router || failed=1; fi
heavy=() light=()
for service in ttt tti; do want "$service" && heavy+=("$service"); done
for service in audio sandbox edge gateway; do want "$service" && light+=("$service"); done
pids=()
[ ${#heavy[@]} -eq 0 ] || { lane "${heavy[@]}" & pids+=($!); }
[ ${#light[@]} -eq 0 ] || { lane "${light[@]}" & pids+=($!); }
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done

printf '%-8s %-10s %9s %8s\n' image state size seconds
for service in "${services[@]}"; do
  [ -f "$logs/$service.result" ] || continue
  read -r _ state seconds <"$logs/$service.result"
  size=$(podman image inspect --format '{{.Size}}' "$registry/$service:$version")
  printf '%-8s %-10s %8dM %8s\n' "$service" "$state" $((size / 1000000)) "$seconds"
done
echo "total ${SECONDS}s ($((SECONDS - start))s building), base $python_base"
exit $failed
