# segexp: `make train` and `make test` install what they need first (into .venv).
#
# Torch knobs: TORCH_VERSION pins the release (default 2.13.0). On Linux, PyPI's torch is a CUDA
# build, so GPU machines get CUDA from the same command; a machine whose pip finds a local CPU
# wheel (as this project's CI machine does) gets that one instead of a multi-GB download.
# To pick a specific CUDA (or CPU-only) build, set TORCH_INDEX_URL to PyTorch's wheel index for it.

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
TORCH_INDEX_URL ?=
T ?=
PROFILE ?= smoke
ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.segexp-installed
TORCH_SOURCE := $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL),)

.PHONY: install train test test-slow test-gpu bench lint clean table tables tables-list

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)" $(TORCH_SOURCE)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/segexp-train experiment=synthetic $(ARGS)

test: $(STAMP)
	$(BIN)/pytest -q $(ARGS)

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow $(ARGS)

test-gpu: $(STAMP)
	$(BIN)/pytest -q -m gpu -rs $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m segexp.cli.bench $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache

# Paper tables: `make table T=deeplabv3.t5 PROFILE=smoke`, `make deeplabv3.t5`, `make tables PROFILE=smoke`.
# `segexp-table run` ends by writing the report (profiles with `evidence: true`: experiments/results/, else outputs/).
TABLE_IDS := $(shell ls experiments/*/t*.yaml 2>/dev/null | sed -E 's|experiments/([^/]+)/(t[0-9]+)\.yaml|\1.\2|')
.PHONY: $(TABLE_IDS)

table: $(STAMP)
	@test -n "$(T)" || { echo "usage: make table T=<table id> [PROFILE=smoke|proxy|full]"; exit 2; }
	$(BIN)/segexp-table run $(T) --profile $(PROFILE) $(ARGS)

tables: $(STAMP)
	$(BIN)/segexp-table run all --profile $(PROFILE) $(ARGS)

tables-list: $(STAMP)
	$(BIN)/segexp-table list

$(TABLE_IDS):
	$(MAKE) table T=$@ PROFILE=$(PROFILE)
