# Developer entry points. Each target installs what it needs, idempotently.
# Debian 12, as root: `make demo` runs the demo, `make test` runs every test.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages the lab, the demo and the integration tests run for real. postgresql (15 on Debian 12):
# the tests start their own throwaway server (tests/support/postgres.py); the default cluster the
# package may create is left alone and never started by us. systemd: systemd-analyze verify/security
# and systemd-sysusers check deploy/systemd (nothing is started); promtool (prometheus) checks and
# unit-tests deploy/prometheus. chromium + chromium-driver: the web console's browser tests (headless,
# through selenium).
APT_PACKAGES := haproxy frr iproute2 procps psmisc curl ca-certificates python3-venv \
	snmpd snmp prometheus prometheus-node-exporter prometheus-alertmanager nftables postgresql systemd \
	chromium chromium-driver

.PHONY: help deps system-deps venv demo demo-bgp demo-health test test-unit lint bench clean lab-down

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

system-deps:  ## apt-get install the daemons the lab runs (only what is missing)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# Debian's python3 creates no virtualenv without python3-venv (ensurepip is in it): install it first.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -c 'import ensurepip' 2>/dev/null || { \
	  echo "installing: python3-venv"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv >/dev/null; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed  ## create the virtualenv with the project and its dev tools

deps: system-deps venv

demo: deps  ## run the demo: lab up, scale 1 → 2+ under load, back to 1, timeline, lab down
	$(PY) -m scaler demo

demo-bgp: deps  ## the same demo with the bgp router driver (ExaBGP → FRR)
	$(PY) -m scaler demo --router bgp

demo-health: deps  ## a member of three dies: out of the FIB within a second, replaced, deleted
	$(PY) -m scaler demo --scenario health

test: deps  ## run every test (unit and integration; needs root for network namespaces)
	$(PY) -m pytest

test-unit: venv  ## run the unit tests only (no root needed)
	$(PY) -m pytest -m 'not integration'

lint: venv  ## ruff, and mypy over the code and the tests
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: deps  ## run the benchmarks; one JSON file per benchmark in bench/results/
	@mkdir -p bench/results
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b --out bench/results || exit 1; done

lab-down:  ## remove the demo lab if a crash left it behind
	$(PY) -m scaler lab down

clean:  ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
