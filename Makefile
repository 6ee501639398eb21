# jobagent: `make run` starts the agent, `make test` passes the suite; both install what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
YOUKI_VERSION := 0.7.0
GRPCURL_VERSION := v1.9.3
TOOLS := .tools/bin
APT_PACKAGES := conmon umoci skopeo docker-registry busybox-static libseccomp-dev pkg-config runc \
  openssl protobuf-compiler strace
# Code generators and buf, pinned (the TypeScript ones in clients/typescript/package-lock.json).
BUF_VERSION := 1.75.0
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
GHZ_VERSION := v0.120.0
BUF := .tools/npm/node_modules/.bin/buf
TS_DIR := clients/typescript
GO_DIR := clients/go
RUST_DIR := clients/rust
DATA_DIR ?= .data
LISTEN ?= 127.0.0.1:50051
RUNTIME ?= youki
EXAMPLE_IMAGE := build/images/busybox
GEN_DIR := clients/python/jobagent/v1
PROTOS := $(wildcard protos/jobagent/v1/*.proto)

.PHONY: help deps apt youki grpcurl venv proto proto-check image run test lint unit e2e bench clean \
  tools clients clients-check clients-build clients-lint clients-unit buf-lint buf-breaking release-api

help:
	@echo "make run    install what is missing, build the example image, start the agent on $(LISTEN)"
	@echo "make test   install what is missing, lint, type-check and run the whole suite"
	@echo "make proto  regenerate the Python code from protos/"
	@echo "make clients  regenerate the Go and TypeScript code from protos/ (Rust: at build time)"
	@echo "make bench  run the benchmarks"

deps: apt youki venv

# grpcurl, for the tests that call the agent through reflection as a person would.
$(TOOLS)/grpcurl:
	GOBIN=$(abspath $(TOOLS)) go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

grpcurl: $(TOOLS)/grpcurl

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

youki:
	@if ! youki --version 2>/dev/null | grep -q "version: $(YOUKI_VERSION)"; then \
	  echo "building youki $(YOUKI_VERSION)"; \
	  cargo install youki --locked --version $(YOUKI_VERSION) --no-default-features \
	    --features v1,v2,seccomp --root /usr/local; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

proto: venv
	@rm -rf $(GEN_DIR) && mkdir -p $(GEN_DIR)
	$(PY) -m grpc_tools.protoc -I protos --python_out=clients/python --grpc_python_out=clients/python \
	  --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy --mypy_out=clients/python \
	  --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc --mypy_grpc_out=clients/python \
	  $(PROTOS)
	@touch clients/python/jobagent/__init__.py $(GEN_DIR)/__init__.py

# CI fails when the committed generated code differs from what protos/ generates.
proto-check: proto
	@git diff --exit-code --stat -- clients/python/jobagent || \
	  { echo "generated code is out of date: run 'make proto' and commit"; exit 1; }

# The other clients: generated code (buf with pinned plugins), builds, lint, API checks.
$(TOOLS)/protoc-gen-go:
	GOBIN=$(abspath $(TOOLS)) go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)

$(TOOLS)/protoc-gen-go-grpc:
	GOBIN=$(abspath $(TOOLS)) go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

$(BUF):
	npm install --prefix .tools/npm --no-audit --no-fund --silent @bufbuild/buf@$(BUF_VERSION)

$(TS_DIR)/node_modules/.installed: $(TS_DIR)/package.json $(TS_DIR)/package-lock.json
	cd $(TS_DIR) && npm ci --no-audit --no-fund --silent
	touch $@

tools: $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc $(BUF) $(TS_DIR)/node_modules/.installed

clients: tools
	@rm -rf $(GO_DIR)/gen $(TS_DIR)/src/gen
	$(BUF) generate

# CI fails when the committed generated code differs from what protos/ generates.
clients-check: clients
	@git diff --exit-code --stat -- $(GO_DIR)/gen $(TS_DIR)/src/gen && \
	  test -z "$$(git ls-files --others --exclude-standard -- $(GO_DIR)/gen $(TS_DIR)/src/gen)" || \
	  { echo "generated client code is out of date: run 'make clients' and commit"; exit 1; }

buf-lint: $(BUF)
	$(BUF) lint

# Breaking changes against the last released API (make release-api records a release).
buf-breaking: $(BUF)
	$(BUF) breaking --against protos/released/jobagent-v1.binpb

release-api: $(BUF)
	$(BUF) build -o protos/released/jobagent-v1.binpb

clients-build: apt tools
	cd $(GO_DIR) && go build -o bin/conformance ./cmd/conformance
	cd $(TS_DIR) && npx tsc -p tsconfig.json
	cd $(RUST_DIR) && cargo build --release --locked --example conformance --quiet

clients-lint: clients-build
	cd $(GO_DIR) && test -z "$$(gofmt -l .)" && go vet ./...
	cd bench/watchload && test -z "$$(gofmt -l .)" && go vet ./...
	cd $(RUST_DIR) && cargo fmt --check

# The clients' own unit tests (target parsing, where a token may go, the bearer header).
clients-unit: clients-build
	cd $(GO_DIR) && go test ./...
	cd $(RUST_DIR) && cargo test --release --locked --lib --quiet

$(EXAMPLE_IMAGE)/index.json: examples/build-busybox-image.sh
	bash examples/build-busybox-image.sh $(EXAMPLE_IMAGE)

image: apt $(EXAMPLE_IMAGE)/index.json

run: deps image
	$(PY) -m agent image-import --data-dir $(DATA_DIR) oci:$(EXAMPLE_IMAGE):latest busybox:latest
	$(PY) -m agent serve --data-dir $(DATA_DIR) --listen $(LISTEN) --runtime $(RUNTIME)

lint: venv
	$(VENV)/bin/ruff check agent clients/python/jobagent_client clients/python/examples tests bench
	$(VENV)/bin/ruff format --check agent clients/python/jobagent_client clients/python/examples tests bench
	$(VENV)/bin/mypy

test: deps grpcurl proto-check clients-check buf-lint buf-breaking clients-lint clients-unit lint
	$(VENV)/bin/pytest -q -p no:cacheprovider

unit: venv
	$(VENV)/bin/pytest -q tests/unit

e2e: deps grpcurl
	$(VENV)/bin/pytest -q tests/e2e

# P1..P7 of the performance issue, each a module of bench/ (`make bench ONLY=P3`).
BENCH_P1 := latency
BENCH_P2 := throughput
BENCH_P3 := image_size
BENCH_P4 := logs
BENCH_P5 := unary
BENCH_P6 := scale
BENCH_P7 := watchers
BENCHES := P1 P2 P3 P4 P5 P6 P7

$(VENV)/.bench: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $@

$(TOOLS)/ghz:
	GOBIN=$(abspath $(TOOLS)) go install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)

# P7's watching side: a Go client, so that the streams take little of the agent's CPU.
$(TOOLS)/watchload: bench/watchload/main.go bench/watchload/go.mod $(wildcard $(GO_DIR)/gen/jobagent/v1/*.go)
	cd bench/watchload && go build -o $(abspath $(TOOLS))/watchload .

bench: deps image $(VENV)/.bench $(TOOLS)/ghz $(TOOLS)/watchload
	@set -e; $(foreach b,$(if $(ONLY),$(ONLY),$(BENCHES)),\
	  $(PY) -m bench.$(BENCH_$(b)) --runtime $(RUNTIME);)

clean:
	rm -rf build $(DATA_DIR)
