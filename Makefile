# trustspace: two commands on a fresh machine with Python 3.11+ — `make demo` and `make test`.
# Each builds or updates .venv from pyproject.toml by itself (re-installing when pyproject changes).

SHELL := /bin/bash
.DEFAULT_GOAL := help

# The first Python >= 3.11 found, unless PYTHON is given (`make test PYTHON=python3.12`).
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
VPY := $(VENV)/bin/python
PIP_FLAGS := --disable-pip-version-check --quiet

.PHONY: help demo test lint typecheck protos protos-check unit bench bench-full soak reliability clean anchors-venv

help:
	@echo "make demo       run the multi-node demo (builds .venv)"
	@echo "make test       lint, type check, proto drift check and the test suite (builds .venv)"
	@echo "make bench      quick benchmarks against the anchors; make bench-full for the full set"
	@echo "make protos     regenerate trustspace/proto/v1 from protos/"
	@echo "make soak       long fault, fuzz and load runs (on demand)"
	@echo "make reliability  run the fault/fuzz/identity/load suite with soak, write docs/reliability.md"

$(VPY):
	@if [ -z "$(PYTHON)" ]; then echo "error: trustspace needs Python >= 3.11; none found on PATH (set PYTHON=...)" >&2; exit 1; fi
	@echo "creating $(VENV) with $$($(PYTHON) --version)"
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install $(PIP_FLAGS) --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(VPY)
	$(VPY) -m pip install $(PIP_FLAGS) -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(VPY)
	$(VPY) -m pip install $(PIP_FLAGS) -e '.[dev]'
	@touch $@ $(VENV)/.installed-run

$(VENV)/.installed-bench: pyproject.toml | $(VPY)
	$(VPY) -m pip install $(PIP_FLAGS) -e '.[dev,bench]'
	@touch $@ $(VENV)/.installed-dev $(VENV)/.installed-run

# The PSI anchors (spu, openmined-psi) pin protobuf/numpy below the project's: their own venv,
# which benchmarks/_psi_anchors.py runs as a subprocess.
ANCHORS_VENV := .venv-anchors
$(ANCHORS_VENV)/.installed: benchmarks/requirements-psi-anchors.txt
	$(PYTHON) -m venv $(ANCHORS_VENV)
	$(ANCHORS_VENV)/bin/python -m pip install $(PIP_FLAGS) -r benchmarks/requirements-psi-anchors.txt
	@touch $@

anchors-venv: $(ANCHORS_VENV)/.installed

demo: $(VENV)/.installed-run
	$(VENV)/bin/trustspace demo $(DEMO_ARGS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(VENV)/bin/mypy

protos: $(VENV)/.installed-dev
	$(VPY) scripts/protos.py generate

protos-check: $(VENV)/.installed-dev
	$(VPY) scripts/protos.py check

unit: $(VENV)/.installed-dev
	$(VENV)/bin/pytest -m "not soak" $(PYTEST_ARGS)

# Every step runs even when an earlier one fails, so one run shows every problem; the exit
# status is non-zero if any step failed.
test: $(VENV)/.installed-dev
	@status=0; \
	for step in lint typecheck protos-check unit; do \
		echo "== make $$step"; \
		$(MAKE) --no-print-directory $$step || { echo "== make $$step FAILED"; status=1; }; \
	done; \
	if [ $$status -ne 0 ]; then echo "make test: FAILED (see the steps marked FAILED above)"; fi; \
	exit $$status

bench: $(VENV)/.installed-bench
	$(VPY) benchmarks/run.py --quick

bench-full: $(VENV)/.installed-bench
	$(VPY) benchmarks/run.py

soak: $(VENV)/.installed-dev
	$(VENV)/bin/pytest -m soak $(PYTEST_ARGS)

reliability: $(VENV)/.installed-dev
	$(VPY) scripts/reliability.py --soak

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info
