# Aegis developer entry points. Everything runs from the project venv (.venv), which
# `make install` (or any target needing it) creates on first use.
#
#   make demo         try Aegis locally: no cluster, no Docker (installs what it needs)
#   make test         the test command: ruff, import boundaries, mypy --strict, pytest
#   make chart-check  helm lint --strict + helm template with every values file, validated
#   make kind-up      a real two-node kind cluster with the chart and the examples (needs Docker)

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Reinstalls when pyproject.toml (the dependency list) changes.
STAMP := $(VENV)/.aegis-installed
PYTEST_ARGS ?=

HELM_PINNED := .tools/bin/helm
# kind-up prefers the pinned helm, then one on PATH (e.g. on macOS, where the pinned linux
# binary can't run).
HELM ?= $(if $(wildcard $(HELM_PINNED)),$(HELM_PINNED),helm)
CHART := charts/aegis
CHART_VALUES := $(sort $(wildcard tests/chart/values/*.yaml))

KIND ?= kind
KUBECTL ?= kubectl
DOCKER ?= docker
KIND_CLUSTER ?= aegis
IMAGE_REPOSITORY ?= aegis
IMAGE_TAG ?= dev
RELEASE ?= aegis
RELEASE_NAMESPACE ?= aegis-system

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z][a-zA-Z_-]*:.*## ' $(MAKEFILE_LIST) | sort | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  make %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@if [ ! -x "$(BIN)/python" ]; then $(PYTHON) -m venv "$(VENV)"; fi
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch "$@"

.PHONY: install
install: $(STAMP) ## create .venv and install the project with its test extras

.PHONY: system-packages
system-packages: ## install postgresql, redis-server and promtool when missing (apt, needs root or sudo)
	@PYTHON="$(PYTHON)" scripts/install-system-packages.sh

$(HELM_PINNED): scripts/fetch-helm.sh
	scripts/fetch-helm.sh

.PHONY: helm
helm: $(HELM_PINNED) ## fetch the pinned, checksum-verified helm into .tools/bin

.PHONY: lint
lint: $(STAMP) ## ruff check and the import boundaries (lint-imports, contracts in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

.PHONY: typecheck
typecheck: $(STAMP) ## mypy --strict on operator/aegis (config in pyproject.toml)
	$(BIN)/mypy

.PHONY: pytest
pytest: $(STAMP) ## the test suite alone (PYTEST_ARGS=... to narrow it)
	$(BIN)/pytest $(PYTEST_ARGS)

# `make -k test` (as CI runs it) goes on to mypy and pytest when ruff fails, so one run
# reports every kind of failure.
.PHONY: test
test: lint typecheck pytest ## the test command (README): ruff check, mypy --strict, pytest

.PHONY: fmt
fmt: $(STAMP) ## format the code and apply safe lint fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

.PHONY: crds
crds: $(STAMP) ## regenerate crds/ and charts/aegis/crds/ from the API models
	$(BIN)/aegis crds

.PHONY: crds-check
crds-check: $(STAMP) ## fail when crds/ or the chart's copy differ from the models
	$(BIN)/aegis crds --check

.PHONY: chart-check
chart-check: $(STAMP) $(HELM_PINNED) ## helm lint --strict, helm template per values file, validate all
	$(HELM_PINNED) lint --strict $(CHART)
	@for values in $(CHART_VALUES); do \
	  echo "+ helm lint --strict + template -f $$values"; \
	  $(HELM_PINNED) lint --strict $(CHART) -f "$$values" >/dev/null; \
	  $(HELM_PINNED) template $(RELEASE) $(CHART) -n $(RELEASE_NAMESPACE) -f "$$values" >/dev/null; \
	done
	$(BIN)/pytest tests/chart -q $(PYTEST_ARGS)

.PHONY: demo
demo: system-packages $(STAMP) ## run the local demo (sandbox API, real PostgreSQL/Redis/S3, operator)
	$(BIN)/aegis sandbox demo

.PHONY: demo-check
demo-check: system-packages $(STAMP) ## the demo, non-interactive: fails if any step falls short
	$(BIN)/aegis sandbox demo --check

.PHONY: bench-smoke
bench-smoke: system-packages $(STAMP) ## every benchmark that has a --smoke flag, at CI size
	@shopt -s nullglob; ran=0; \
	for bench in bench/*.py; do \
	  grep -q -- '--smoke' "$$bench" || continue; \
	  echo "+ $(BIN)/python $$bench --smoke"; \
	  $(BIN)/python "$$bench" --smoke; ran=$$((ran + 1)); \
	done; \
	echo "bench-smoke: $$ran benchmark(s) ran"

.PHONY: image
image: ## docker build the operator/agent image as $(IMAGE_REPOSITORY):$(IMAGE_TAG)
	$(DOCKER) build -t $(IMAGE_REPOSITORY):$(IMAGE_TAG) .

.PHONY: kind-up
kind-up: ## kind cluster + image + helm install + examples (needs Docker, kind, kubectl, helm)
	@for tool in $(DOCKER) $(KIND) $(KUBECTL) $(HELM); do \
	  command -v "$$tool" >/dev/null || { echo "kind-up: $$tool not found" >&2; exit 1; }; \
	done
	@if $(KIND) get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)'; then \
	  echo "kind cluster $(KIND_CLUSTER) exists; reusing it"; \
	else \
	  $(KIND) create cluster --name $(KIND_CLUSTER) --config kind-config.yaml --wait 120s; \
	fi
	$(DOCKER) build -t $(IMAGE_REPOSITORY):$(IMAGE_TAG) .
	$(KIND) load docker-image $(IMAGE_REPOSITORY):$(IMAGE_TAG) --name $(KIND_CLUSTER)
	$(HELM) upgrade --install $(RELEASE) $(CHART) \
	  --kube-context kind-$(KIND_CLUSTER) \
	  --namespace $(RELEASE_NAMESPACE) --create-namespace \
	  --set image.repository=$(IMAGE_REPOSITORY) --set image.tag=$(IMAGE_TAG) \
	  --set image.pullPolicy=Never --set logFormat=text \
	  --wait --timeout 5m
	$(KUBECTL) --context kind-$(KIND_CLUSTER) apply -f examples/
	$(KUBECTL) --context kind-$(KIND_CLUSTER) get dr -A
	@echo
	@echo "Aegis runs in kind cluster $(KIND_CLUSTER). Next:"
	@echo "  kubectl --context kind-$(KIND_CLUSTER) get dr -n shop"
	@echo "  kubectl --context kind-$(KIND_CLUSTER) -n $(RELEASE_NAMESPACE) logs deploy/$(RELEASE)"
	@echo "  make kind-down"

.PHONY: kind-down
kind-down: ## delete the kind cluster
	$(KIND) delete cluster --name $(KIND_CLUSTER)

.PHONY: clean
clean: ## remove caches and fetched tools (keeps .venv)
	rm -rf .tools .pytest_cache .mypy_cache .ruff_cache build dist
