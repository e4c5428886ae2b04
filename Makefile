# Two commands matter: `make up` (the whole mesh, locally) and `make test` (everything CI runs).
# Each installs what it needs; built artifacts are cached under .cache/ so repeat runs are quick.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
BUF := .cache/tools/node_modules/.bin/buf
export GENMESH_CACHE ?= $(HOME)/.cache/genmesh
export PATH := $(CURDIR)/$(VENV)/bin:$(CURDIR)/.cache/bin:$(PATH)

.PHONY: up test setup proto proto-check lint typecheck pytest bench clean chart-check

up: setup web
	$(VENV)/bin/genmesh up

# pytest, the cluster tests and the image tests run side by side: the latter two mostly wait (on
# the API server, on podman), so beside pytest they add little to the run's length.
test: kube-tools-background setup proto-check lint typecheck chart-check
	$(MAKE) -j3 --output-sync=target pytest kube-test images-test

setup: $(VENV)/.installed $(BUF)

$(VENV)/.installed: pyproject.toml scripts/setup_env.sh
	scripts/setup_env.sh $(PYTHON) $(VENV)
	touch $@

$(BUF):
	mkdir -p .cache/tools
	npm install --silent --no-audit --no-fund --prefix .cache/tools @bufbuild/buf@1.75.0

proto: setup
	scripts/gen_protos.sh

# Generated code must match the protos, buf lint must be clean, and main must stay compatible.
proto-check: proto
	@if [ -n "$$(git status --porcelain -- services/v1 services/gateway/gen services/gateway/openapi)" ]; then \
		git status --porcelain -- services/v1 services/gateway/gen services/gateway/openapi; \
		echo "generated code drifted from protos/: run 'make proto' and commit"; exit 1; fi
	$(BUF) lint
	scripts/buf_breaking.sh $(BUF)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy's cache lives beside the other caches, so a fresh clone checks only what changed.
typecheck: setup
	mkdir -p .cache/typecheck && ln -sfn ../../services .cache/typecheck/genmesh
	$(VENV)/bin/mypy --cache-dir "$(GENMESH_CACHE)/mypy" -p genmesh
	$(VENV)/bin/mypy --cache-dir "$(GENMESH_CACHE)/mypy" tests bench

# The REST gateway, built before the tests that start it: a cold build downloads and compiles
# grpc-gateway and grpc-go (minutes); Go's build cache makes a warm one take a second.
.PHONY: gateway
gateway:
	services/gateway/build.sh >/dev/null

pytest: setup vault-server gateway web chromium
	$(VENV)/bin/pytest -q --durations=15 --ignore=tests/chart --ignore=tests/kube --ignore=tests/images $(PYTEST_ARGS)

# A Vault-compatible server for the runtime secrets tests, built once from the Go module proxy
# into $GENMESH_CACHE/bin (scripts/vault_server.sh says why it is Vault rather than OpenBao).
.PHONY: vault-server
vault-server:
	scripts/vault_server.sh >/dev/null

# The Helm chart and the Dockerfiles, checked without a cluster or a Docker engine: helm and
# kube-score are built from the Go module proxy once and cached in $GENMESH_CACHE/bin.
chart-check: setup
	scripts/helm_tools.sh
	$(VENV)/bin/pytest -q tests/chart

# The web playground the edge serves at / (web/, Vite): built once per change of its sources
# into $GENMESH_CACHE/web, where the edge finds it.
.PHONY: web chromium playground-test
web:
	scripts/build_web.sh >/dev/null

# Debian's chromium, for the playground's browser tests (Playwright drives it; no browser
# download of its own).
chromium:
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)

# The playground alone: headless Chromium against a real mesh; screenshots in
# .cache/artifacts/playground/.
playground-test: setup web chromium
	$(VENV)/bin/pytest -q tests/playground $(PYTEST_ARGS)

# The chart installed on a real Kubernetes API server (etcd and kube-apiserver on loopback).
# kube-apiserver is built from the Go module proxy once into $GENMESH_CACHE/bin (about 20 minutes
# cold on 2 cores), so `make test` starts that build in the background first; kube-test's own
# kube-tools waits on the same lock instead of building twice.
.PHONY: kube-tools kube-tools-background kube-test
kube-tools:
	scripts/kube_tools.sh

kube-tools-background:
	mkdir -p .cache && (scripts/kube_tools.sh >.cache/kube-tools.log 2>&1 &)

kube-test: setup kube-tools
	scripts/helm_tools.sh
	$(VENV)/bin/pytest -q tests/kube

# The container images of every service (podman, as root; scripts/images.sh), each rebuilt only
# when its inputs changed; images-test runs them as the chart does (tests/images).
.PHONY: images images-test
images:
	scripts/images.sh

images-test: setup images
	scripts/helm_tools.sh
	$(VENV)/bin/pytest -q tests/images $(PYTEST_ARGS)

bench: setup
	$(PY) bench/report.py

clean:
	rm -rf $(VENV) .cache
