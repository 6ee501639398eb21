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
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
GHZ_VERSION := v0.120.0
BUF_DIR := tools/buf
BUF := $(BUF_DIR)/node_modules/.bin/buf
TS_DIR := clients/typescript
GO_DIR := clients/go
RUST_DIR := clients/rust
DATA_DIR ?= .data
# make run serves on a socket of its own (mode 0660, in a 0700 directory) and the agent makes
# an admin token in $(DATA_DIR)/admin.token; RUN_ARGS adds serve flags (--listen HOST:PORT
# with --tokens-file FILE, say).
RUN_DIR := .run
LISTEN ?= unix:$(abspath $(RUN_DIR))/jobagent.sock
RUN_ARGS ?=
RUNTIME ?= youki
EXAMPLE_IMAGE := build/images/busybox
GEN_DIR := clients/python/jobagent/v1
PROTOS := $(wildcard protos/jobagent/v1/*.proto)

.PHONY: help deps apt youki grpcurl venv lock fresh-check proto proto-check image run test lint unit e2e \
  bench soak clean tools clients clients-check clients-build clients-lint clients-unit buf-lint buf-breaking \
  release-api

help:
	@echo "make run    install what is missing, build the example image, start the agent on $(LISTEN)"
	@echo "make test   install what is missing, lint, type-check and run the whole suite"
	@echo "make lock   re-resolve requirements/*.txt from pyproject.toml (UPGRADE=1: newest)"
	@echo "make fresh-check  run make test in a fresh clone, as a newcomer would"
	@echo "make proto  regenerate the Python code from protos/"
	@echo "make clients  regenerate the Go and TypeScript code from protos/ (Rust: at build time)"
	@echo "make bench  run the benchmarks"
	@echo "make soak   about 10 minutes of mixed work: the agent's memory, fds, threads, leftovers"

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

# Python packages come from the lock files only (requirements/*.txt, hashes required); the
# venv is made anew whenever the lock changes, so that nothing of an older lock stays.
LOCK_SETS := runtime dev bench
$(VENV)/.installed: requirements/dev.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r requirements/dev.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

venv: $(VENV)/.installed

# Re-resolves the locks from pyproject.toml, keeping today's pins where they still fit;
# `make lock UPGRADE=1` moves every package to its newest allowed version.
lock: venv
	@set -e; for set in $(LOCK_SETS); do \
	  case $$set in runtime) extras="";; dev) extras="--extra dev";; \
	    bench) extras="--extra dev --extra bench";; esac; \
	  $(VENV)/bin/uv pip compile --quiet pyproject.toml requirements/build.in $$extras \
	    --generate-hashes --python-version 3.11 --custom-compile-command "make lock" \
	    $(if $(UPGRADE),--upgrade) -o requirements/$$set.txt; \
	  echo "locked requirements/$$set.txt"; \
	done

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

# buf from the npm registry, at the version and hashes of tools/buf/package-lock.json.
$(BUF): $(BUF_DIR)/package.json $(BUF_DIR)/package-lock.json
	cd $(BUF_DIR) && npm ci --no-audit --no-fund --silent
	touch $@

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
	cd $(TS_DIR) && node --test dist/test/
	cd $(RUST_DIR) && cargo test --release --locked --lib --quiet

$(EXAMPLE_IMAGE)/index.json: examples/build-busybox-image.sh
	bash examples/build-busybox-image.sh $(EXAMPLE_IMAGE)

image: apt $(EXAMPLE_IMAGE)/index.json

run: deps image
	$(PY) -m agent image-import --data-dir $(DATA_DIR) oci:$(EXAMPLE_IMAGE):latest busybox:latest
	@echo "serving on $(LISTEN); in another terminal:"
	@echo "  export JOBAGENT_ADDRESS=$(LISTEN) JOBAGENT_TOKEN_FILE=$(abspath $(DATA_DIR))/admin.token"
	@echo "  .venv/bin/jobctl node"
	$(PY) -m agent serve --data-dir $(DATA_DIR) --listen $(LISTEN) --runtime $(RUNTIME) $(RUN_ARGS)

lint: venv
	$(VENV)/bin/ruff check agent clients/python/jobagent_client clients/python/examples tests bench
	$(VENV)/bin/ruff format --check agent clients/python/jobagent_client clients/python/examples tests bench
	$(VENV)/bin/mypy

# Strict: a program that these steps install and a test needs is a failure, not a skip.
test: deps grpcurl proto-check clients-check buf-lint buf-breaking clients-lint clients-unit lint
	JOBAGENT_STRICT_TESTS=1 $(VENV)/bin/pytest -q -rs -p no:cacheprovider

# A newcomer's run: a clone of the committed HEAD in a new directory, a new venv, no pip
# cache, then the README's test command. The shared job specs beside this checkout are
# handed on (JOBAGENT_SPECS_DIR), as CI lays them beside its clone.
SPECS_DIR ?= $(abspath ../shared/specs)
fresh-check:
	@set -e; scratch=$$(mktemp -d); trap 'rm -rf "$$scratch"' EXIT; \
	git clone --quiet "$(CURDIR)" "$$scratch/jobagent"; \
	revision=$$(git -C "$$scratch/jobagent" rev-parse --short HEAD); \
	start=$$(date +%s); \
	if PIP_NO_CACHE_DIR=1 JOBAGENT_SPECS_DIR="$(SPECS_DIR)" $(MAKE) -C "$$scratch/jobagent" test; \
	then verdict=passed; else verdict=failed; fi; \
	echo "fresh-check: make test $$verdict in $$(( $$(date +%s) - start )) s (clone of $$revision)"; \
	test $$verdict = passed

unit: venv
	$(VENV)/bin/pytest -q tests/unit

e2e: deps grpcurl
	$(VENV)/bin/pytest -q tests/e2e

# P1..P7 of the performance issue (and P3c, a cold start; P3U, P3 with and without a user
# namespace), each a module of bench/ run in turn by bench/report.py, which ends with one
# table of every figure against its bar (`make bench ONLY="P1 P3c"`; BENCH_ARGS for
# bench.report, e.g. --set 'P2=--rounds 1').
ONLY ?=
BENCH_ARGS ?=

$(VENV)/.bench: $(VENV)/.installed requirements/bench.txt
	$(PY) -m pip install -q --require-hashes -r requirements/bench.txt
	touch $@

$(TOOLS)/ghz:
	GOBIN=$(abspath $(TOOLS)) go install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)

# P7's watching side: a Go client, so that the streams take little of the agent's CPU.
$(TOOLS)/watchload: bench/watchload/main.go bench/watchload/go.mod $(wildcard $(GO_DIR)/gen/jobagent/v1/*.go)
	cd bench/watchload && go build -o $(abspath $(TOOLS))/watchload .

bench: deps image $(VENV)/.bench $(TOOLS)/ghz $(TOOLS)/watchload
	$(PY) -m bench.report --runtime $(RUNTIME) $(BENCH_ARGS) $(ONLY)

# About ten minutes of mixed work with two agent restarts (bench/soak.py): the agent's RSS,
# open fds and threads over time, and what is left at the end (`make soak SOAK_ARGS="--minutes
# 2 --jobs 1000"` for a shorter one).
SOAK_ARGS ?=
soak: deps image
	$(PY) -m bench.soak --runtime $(RUNTIME) $(SOAK_ARGS)

clean:
	rm -rf build $(DATA_DIR) $(RUN_DIR)
