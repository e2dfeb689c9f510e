# The two commands a newcomer needs: `make demo` (the main job) and `make test` (every check).
# Both set themselves up first. DATABASE_URL points them at a real PostgreSQL instead of the
# embedded one.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SAM_VENV := .venv-sam

export SAM_CLI_TELEMETRY := 0
export ARTILLERY_DISABLE_TELEMETRY := true
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help setup demo test lint typecheck openapi-check template-check pytest unit integration e2e load-smoke bench openapi clean

help:
	@echo "make demo    - the whole main job locally: embedded PostgreSQL, local API, Artillery load test, report"
	@echo "make test    - every check: ruff, mypy, OpenAPI drift, sam validate --lint + sam build, pytest + coverage"
	@echo "make bench   - booking-path benchmarks, figures under reports/bench/"
	@echo "make setup   - create .venv (Python deps + capctl), .venv-sam (AWS SAM CLI), node_modules (Artillery)"

setup: $(VENV)/.installed $(SAM_VENV)/.installed node_modules/.installed

$(VENV)/.installed: pyproject.toml requirements-dev.txt constraints.txt layers/capacity/requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is required (PYTHON=$(PYTHON))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -r requirements-dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

$(SAM_VENV)/.installed: requirements-sam.txt
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-sam.txt
	@touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

demo: setup
	$(BIN)/capctl demo

test: setup lint typecheck openapi-check template-check pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed
	$(BIN)/mypy
	@# each function's app.py is a module named `app`: one mypy run per function
	for f in functions/*/app.py; do $(BIN)/mypy "$$f" || exit 1; done

openapi-check: $(VENV)/.installed
	$(BIN)/capctl openapi --check

openapi: $(VENV)/.installed
	$(BIN)/capctl openapi

template-check: $(SAM_VENV)/.installed
	bash scripts/sam-check.sh

# One pytest run over every kind (unit, integration on the embedded PostgreSQL, e2e through
# HTTP, the Artillery smoke), with the layer's coverage gate. Exit 5 (no tests collected) is
# reported, not hidden.
pytest: $(VENV)/.installed node_modules/.installed
	$(BIN)/pytest --cov=capacity --cov-branch --cov-report=term-missing:skip-covered --cov-fail-under=90 \
	    -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; fi; exit $$rc

unit: $(VENV)/.installed
	$(BIN)/pytest -q tests/unit

integration: $(VENV)/.installed
	$(BIN)/pytest -q tests/integration

e2e: $(VENV)/.installed
	$(BIN)/pytest -q tests/e2e

load-smoke: setup
	$(BIN)/pytest -q tests/load

bench: $(VENV)/.installed
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) $(SAM_VENV) node_modules .aws-sam .capctl .coverage .mypy_cache .ruff_cache .pytest_cache
