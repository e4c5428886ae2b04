#!/usr/bin/env bash
# A real Kubernetes API server for the chart's install tests (tests/kube): kube-apiserver built
# from the Go module proxy at a pinned version and cached in $GENMESH_CACHE/bin, and etcd from
# Debian's etcd-server package (installed when missing). A cold build takes about 13 CPU-minutes
# (8 to 25 minutes on two shared cores), so CI starts it early in the background
# (`make kube-tools &`) and later runs wait on the same lock; a warm run only checks files.
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces the k8s.io/* staging modules
# with folders that the module zip leaves out. A throwaway module requires it and replaces those
# modules with their published versions (v0.X.Y for Kubernetes v1.X.Y) instead.
# Prints nothing on success. Usage: scripts/kube_tools.sh [bin-dir]
set -euo pipefail
KUBERNETES_VERSION=v1.37.2
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
bin=${1:-$cache_bin}
lock "$bin" kube-tools

target="$bin/kube-apiserver-$KUBERNETES_VERSION"
if [ ! -x "$target" ]; then
	scratch
	# The version the server reports (helm checks charts' kubeVersion against it), set as
	# Kubernetes' own build does (hack/lib/version.sh).
	minor=${KUBERNETES_VERSION#v1.}
	minor=${minor%%.*}
	ldflags="-s"
	for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
		ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
		ldflags+=" -X $pkg.gitTreeState=clean"
	done
	(
		cd "$work"
		export GOWORK=off GOFLAGS=-mod=mod
		kubernetes_mod=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" |
			sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
		{
			printf 'module genmesh.invalid/kubetools\n\ngo 1.26.0\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' \
				"$KUBERNETES_VERSION"
			sed -n "s|^\t\(k8s.io/[^ ]*\) => ./staging/.*|\t\1 => \1 v0.$minor.${KUBERNETES_VERSION##*.}|p" \
				"$kubernetes_mod"
			printf ')\n'
		} >go.mod
		# `go get` lists every module it adds on stderr: shown only when it fails.
		log=$(go get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBERNETES_VERSION" 2>&1) || {
			echo "$log" >&2
			exit 1
		}
		CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$target.tmp" k8s.io/kubernetes/cmd/kube-apiserver
	)
	mv "$target.tmp" "$target"
fi
ln -sfn "kube-apiserver-$KUBERNETES_VERSION" "$bin/kube-apiserver"

if ! command -v etcd >/dev/null; then
	# The package's service is not started where there is no init system; the tests run their own.
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server >/dev/null ||
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server >/dev/null; }
fi
ln -sfn "$(command -v etcd)" "$bin/etcd"
