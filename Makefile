# progemu-pacs: set-up, demo, tests, lint.
#
# Set-up is idempotent and driven by stamp files in $(VENV):
#   $(VENV)/.stamp-system-deps  scripts/install-system-deps.sh ran and found (or installed) every
#                               Debian package; redone when that script changes
#   $(VENV)/.stamp-install      torch + the project (editable, with test extras) installed; redone
#                               when pyproject.toml changes
#   $(VENV)/.stamp-fhir-server  npm ci of the FHIR test server (tests/fhir_server); redone when its lock
#                               file changes
# `make setup` does all three; demo, test and lint depend on it.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV ?= .venv
PYTEST_ARGS ?=
# The CPU wheel that lies on this kind of machine's disk; asked for by exact version so that pip
# takes it rather than a multi-gigabyte CUDA build from the index. Installed before the project,
# whose torch range it satisfies.
TORCH_SPEC ?= torch==2.13.0
# Where that wheel lies (pip's config here names it too; passing it again does no harm).
WHEEL_DIR ?= /opt/wheels
PIP_FLAGS ?= --disable-pip-version-check $(if $(CI),--progress-bar off) \
             $(if $(wildcard $(WHEEL_DIR)),--find-links $(WHEEL_DIR))

VENV_PY := $(VENV)/bin/python
SYSTEM_STAMP := $(VENV)/.stamp-system-deps
INSTALL_STAMP := $(VENV)/.stamp-install
FHIR_STAMP := $(VENV)/.stamp-fhir-server

.PHONY: help setup system-deps demo test lint clean distclean

help:
	@echo "make setup      system packages (root) + $(VENV) with torch CPU and the project"
	@echo "make demo       run 'progemu demo' into out/demo"
	@echo "make test       run the test suite (PYTEST_ARGS='-k sc -x' to narrow)"
	@echo "make lint       ruff, mypy, and the package boundaries (lint-imports; contracts in pyproject.toml)"
	@echo "make clean      remove outputs and caches (keeps $(VENV)); make distclean also removes $(VENV)"

setup: $(INSTALL_STAMP) $(FHIR_STAMP)

system-deps: $(SYSTEM_STAMP)

$(SYSTEM_STAMP): scripts/install-system-deps.sh
	bash scripts/install-system-deps.sh
	@mkdir -p $(VENV)
	@touch $@

$(VENV_PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "error: $(PYTHON) is Python $$($(PYTHON) -c 'import platform; print(platform.python_version())'); progemu-pacs needs >= 3.11 (set PYTHON=python3.11)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Order-only: a re-run of the system check doesn't force a reinstall of the venv.
$(INSTALL_STAMP): pyproject.toml | $(SYSTEM_STAMP) $(VENV_PY)
	$(VENV_PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(VENV_PY) -m pip install $(PIP_FLAGS) '$(TORCH_SPEC)'
	$(VENV_PY) -m pip install $(PIP_FLAGS) -e '.[test]'
	@$(VENV_PY) -c 'import torch; print("installed torch", torch.__version__, "CUDA " + torch.version.cuda if torch.version.cuda else "CPU build")'
	@touch $@

# Medplum's FHIR router and validator, locked; only the tests use it.
$(FHIR_STAMP): tests/fhir_server/package-lock.json | $(SYSTEM_STAMP) $(VENV_PY)
	cd tests/fhir_server && npm ci --no-audit --no-fund
	@touch $@

demo: $(INSTALL_STAMP)
	$(VENV)/bin/progemu demo --out out/demo

test: $(INSTALL_STAMP) $(FHIR_STAMP)
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

# Static checks, all configured in pyproject.toml: style (ruff), types (mypy over plugin, inference, dicom_io,
# benchmarks and scripts) and the package boundaries (import-linter: inference imports no DICOM code,
# dicom_io no model code, neither the application). tests/test_import_boundaries.py repeats the last one.
lint: $(INSTALL_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

clean:
	rm -rf out test-artifacts build dist .pytest_cache .ruff_cache .mypy_cache .import_linter_cache ./*.egg-info
	find . -path ./$(VENV) -prune -o -path ./.git -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
