# The two commands of the README: `make run` (the whole pipeline locally on MovieLens-100k) and
# `make test` (lint, types, tests). Both install what they need, once: the stamps below are only
# rebuilt when pyproject.toml / package-lock.json change.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY_STAMP   := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export PATH := $(CURDIR)/node_modules/.bin:$(PATH)

.PHONY: run test install lint typecheck data synth clean

run: install
	$(BIN)/recpipe run

test: install lint typecheck
	$(BIN)/python -m pytest

install: $(PY_STAMP) $(NODE_STAMP)

$(PY_STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "recpipe needs Python >= 3.11 (set PYTHON=python3.11)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

lint: $(PY_STAMP)
	$(BIN)/ruff check .

typecheck: $(PY_STAMP)
	$(BIN)/mypy recpipe workflows lambdas infra app.py

data: $(PY_STAMP)
	$(BIN)/recpipe data

synth: install
	npx cdk synth --quiet

clean:
	rm -rf $(VENV) node_modules cdk.out .recpipe .mypy_cache .pytest_cache .ruff_cache
