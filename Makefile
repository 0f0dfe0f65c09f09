# Billing Workbench: `make demo` and `make test` set themselves up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8866

.PHONY: demo test test-fast serve lab bench lint clean-data help

help:
	@echo "make demo   - set up, simulate a company, run the whole pipeline, leave reports and dashboards"
	@echo "make test   - set up and run the test suite"
	@echo "make serve  - serve the Voila dashboards on http://127.0.0.1:$(PORT)/"
	@echo "make lab    - start JupyterLab with the project's environment"
	@echo "make bench  - run every benchmark and rewrite benchmarks/RESULTS.md"
	@echo "make clean-data - delete data/ and reports/ (warehouse, models, approvals, policy in force, runs) to start over"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the package metadata changed.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/workbench demo
	@echo
	@echo "Executed reports: reports/index.html (newest run first)."
	@echo "Dashboards: run 'make serve' and open http://127.0.0.1:$(PORT)/"

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

serve: $(STAMP)
	$(BIN)/workbench serve --port $(PORT)

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=.

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do \
		echo "== $$b"; PYTHONPATH=. $(BIN)/python $$b || exit 1; \
	done
	PYTHONPATH=. $(BIN)/python benchmarks/report.py
	@echo "Wrote benchmarks/RESULTS.md"

lint: $(STAMP)
	$(BIN)/ruff check workbench tests benchmarks
	$(BIN)/ruff format --check workbench tests benchmarks

clean-data:
	rm -rf data reports
