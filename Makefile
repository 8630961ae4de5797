# Two commands matter: `make run` and `make test`. Both work on a fresh machine with only
# Python 3.11+: they create .venv and install the project into it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000

.PHONY: run test lint install install-test clean bench wrk

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Stamp files: reinstall only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: install
	$(BIN)/analytics-service run --port $(PORT)

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

# The benchmark (docs/benchmarks.md): a few minutes of load on 127.0.0.1 only. Not part of
# `make test`. BENCH_ARGS="--seconds 5" shortens the phases; GUNICORN_* variables change the
# server configuration under test.
bench: install wrk
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# wrk comes from the system packages (Debian/Ubuntu); installed only when missing.
wrk:
	@command -v wrk >/dev/null || { \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$SUDO apt-get update && $$SUDO apt-get install -y wrk; }

clean:
	rm -rf $(VENV) var test-output .pytest_cache .ruff_cache
