# make run: set up .venv and run the offline demo. make test: set up .venv, lint, and run the tests.
# make test-fast: the same without the slow end-to-end tests (pytest -m 'not slow').
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint clean

# pip prints errors only (-qq); tests/test_packaging.py checks that the build itself warns of nothing
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/cnnvis run

lint: $(STAMP)
	$(BIN)/ruff check cnnvis_cli tests benchmarks

test: lint
	$(BIN)/pytest

test-fast: lint
	$(BIN)/pytest -m 'not slow'

clean:
	rm -rf $(VENV) build dist *.egg-info
