# Read top to bottom: `make serve` runs the service, `make test` proves it. Both set everything up first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3.12)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= $(or $(DS_HOST),127.0.0.1)
PORT ?= $(or $(DS_PORT),8000)
DS_MODEL_DIR ?= models/default
export DS_MODEL_DIR

# Debian packages the tests and the tooling use: espeak-ng speaks test audio, sox shapes it, libsndfile1 backs
# soundfile, g++ builds KenLM's build_binary for scorers, chromium runs the page's browser test, shellcheck
# checks the launchd scripts.
SYSTEM_PACKAGES := espeak-ng sox libsndfile1 g++ cmake chromium shellcheck redis-server haproxy

.PHONY: help serve test lint system-deps serve-venv venv clean default-model bench model-ds093

help:
	@echo "make serve   set up a virtualenv and serve $(DS_MODEL_DIR) on http://$(HOST):$(PORT)"
	@echo "make test    set up everything and run lint, type checks and the test suite"
	@echo "make default-model   retrain models/default from synthetic speech (about an hour on 2 cores)"
	@echo "make bench   ratios vs the seed loop, the native client and unbatched streams (~45 min; bench.json)"
	@echo "make model-ds093   download Mozilla's DeepSpeech 0.9.3, convert it into models/ds093 and check it loads"

# Another apt-get (unattended upgrades, a second terminal) may hold dpkg's lock: wait for it instead of failing.
APT_WAIT := -o DPkg::Lock::Timeout=600

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get $(APT_WAIT) update -qq && \
	    $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get $(APT_WAIT) install -y -qq $$missing >/dev/null; \
	  else echo "warning: install$$missing with your package manager (tests that need them will fail)"; fi; \
	fi

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "error: Python 3.11 or 3.12 is required (flashlight-text has wheels only for those)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Serving needs the service alone (and coremltools on macOS, where the Core ML backend runs); `make test` and the
# model tools extend the same venv with the convert (TensorFlow, coremltools), train (torch) and test extras.
SERVE_EXTRAS := $(if $(filter Darwin,$(shell uname -s)),[coreml],)

$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.$(SERVE_EXTRAS)'
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.serve-installed
	$(BIN)/pip install -q -e '.[convert,train,test,download]'
	touch $@

# The real model needs the converter and the downloader, not the training and test tools.
$(VENV)/.model-tools: pyproject.toml $(VENV)/.serve-installed
	$(BIN)/pip install -q -e '.[convert,download]'
	touch $@

serve-venv: $(VENV)/.serve-installed
venv: $(VENV)/.installed

# A missing model directory is made with the converter's tooling (TensorFlow, coremltools): the full venv, installed
# only then (a prerequisite, even order-only, would install it for every `make serve`).
$(DS_MODEL_DIR)/manifest.json:
	$(MAKE) venv
	@echo "!!! $(DS_MODEL_DIR) is missing: building a RANDOM-WEIGHT model so the service can start."
	@echo "!!! Its transcripts are noise. Convert a real DeepSpeech checkpoint with scripts/convert.py (see README)."
	$(BIN)/python scripts/make_random_model.py --out $(DS_MODEL_DIR)

serve: serve-venv $(DS_MODEL_DIR)/manifest.json
	DS_HOST=$(HOST) DS_PORT=$(PORT) $(BIN)/python -m app

lint: venv
	$(BIN)/ruff check app dsconvert scripts tests
	$(BIN)/mypy

test: system-deps venv lint
	$(BIN)/python -m pytest

# Fixed seeds and pinned inputs: speaks the corpus with espeak-ng, trains (time-boxed), exports upstream-named
# weights, builds the KenLM scorer, converts with scripts/convert.py and writes models/default/EVALUATION.md.
default-model: system-deps venv
	@dpkg -s fortunes fortunes-min wamerican >/dev/null 2>&1 || apt-get $(APT_WAIT) install -y -qq fortunes fortunes-min wamerican
	$(BIN)/python scripts/train_default.py --out models/default

# Side-by-side ratios measured in one run (shared machines are noisy): whole file by stage and over HTTP,
# streaming vs the coremltools guide's loop, the DeepSpeech 0.9.3 native client, 1-64 concurrent streams with
# batching on and off, and this machine's sgemm/bandwidth limit. `scripts/bench.py --quick` takes < 10 min.
bench: system-deps venv
	$(BIN)/python scripts/bench.py --json bench.json

# Mozilla's released DeepSpeech 0.9.3 (checkpoint + scorer, over 1 GB, resumable in .cache/downloads), converted into
# models/ds093 and loaded once. DS_RELEASE_BASE_URL points it at a mirror; GET_MODEL_ARGS adds options, e.g.
# GET_MODEL_ARGS="--sha256 deepspeech-0.9.3-models.scorer=<hex> --force" (scripts/get_model.py --help).
model-ds093: $(VENV)/.model-tools
	$(BIN)/python scripts/get_model.py --out models/ds093 $(GET_MODEL_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
