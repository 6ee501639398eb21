# jobagent: `make run` starts the agent, `make test` passes the suite; both install what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
YOUKI_VERSION := 0.7.0
GRPCURL_VERSION := v1.9.3
TOOLS := .tools/bin
APT_PACKAGES := conmon umoci skopeo docker-registry busybox-static libseccomp-dev pkg-config runc
DATA_DIR ?= .data
LISTEN ?= 127.0.0.1:50051
RUNTIME ?= youki
EXAMPLE_IMAGE := build/images/busybox
GEN_DIR := clients/python/jobagent/v1
PROTOS := $(wildcard protos/jobagent/v1/*.proto)

.PHONY: help deps apt youki grpcurl venv proto proto-check image run test lint unit e2e bench clean

help:
	@echo "make run    install what is missing, build the example image, start the agent on $(LISTEN)"
	@echo "make test   install what is missing, lint, type-check and run the whole suite"
	@echo "make proto  regenerate the Python code from protos/"
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

$(EXAMPLE_IMAGE)/index.json: examples/build-busybox-image.sh
	bash examples/build-busybox-image.sh $(EXAMPLE_IMAGE)

image: apt $(EXAMPLE_IMAGE)/index.json

run: deps image
	$(PY) -m agent image-import --data-dir $(DATA_DIR) oci:$(EXAMPLE_IMAGE):latest busybox:latest
	$(PY) -m agent serve --data-dir $(DATA_DIR) --listen $(LISTEN) --runtime $(RUNTIME)

lint: venv
	$(VENV)/bin/ruff check agent clients/python/jobagent_client tests bench
	$(VENV)/bin/ruff format --check agent clients/python/jobagent_client tests bench
	$(VENV)/bin/mypy

test: deps grpcurl proto-check lint
	$(VENV)/bin/pytest -q -p no:cacheprovider

unit: venv
	$(VENV)/bin/pytest -q tests/unit

e2e: deps grpcurl
	$(VENV)/bin/pytest -q tests/e2e

BENCHES := latency throughput image_size

bench: deps
	@for b in $(if $(ONLY),$(ONLY),$(BENCHES)); do $(PY) -m bench.$$b --runtime $(RUNTIME) || exit 1; done

clean:
	rm -rf build $(DATA_DIR)
