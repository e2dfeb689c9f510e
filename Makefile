# The two commands a newcomer needs: `make demo` (the main job) and `make test` (every check).
# Both set themselves up first. DATABASE_URL points them at a real PostgreSQL instead of the
# embedded one.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SAM_VENV := .venv-sam
CHECKOV_VENV := .venv-checkov

export SAM_CLI_TELEMETRY := 0
export ARTILLERY_DISABLE_TELEMETRY := true
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help setup demo test lint typecheck openapi-check template-check workflow-check security-scan pytest unit integration e2e load-smoke bench openapi clean

help:
	@echo "make demo    - the whole main job locally: embedded PostgreSQL, local API, Artillery load test, report"
	@echo "make test    - every check: ruff, mypy, OpenAPI drift, sam validate --lint + sam build, workflow schemas, checkov, pytest + coverage"
	@echo "make bench   - booking-path benchmarks, figures under reports/bench/"
	@echo "make setup   - create .venv (Python deps + capctl), .venv-sam (AWS SAM CLI), .venv-checkov, node_modules (Artillery)"

setup: $(VENV)/.installed $(SAM_VENV)/.installed $(CHECKOV_VENV)/.installed node_modules/.installed

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

# checkov pins packages that clash with the project's: a virtualenv of its own, every version pinned.
$(CHECKOV_VENV)/.installed: requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-checkov.txt
	@touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

demo: setup
	$(BIN)/capctl demo

test: setup lint typecheck openapi-check template-check workflow-check security-scan pytest

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

# The GitHub workflows against their schema (shipped inside check-jsonschema: no network).
workflow-check: $(VENV)/.installed
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

# The template scanned as a security team would. Offline (--skip-download: no Prisma Cloud
# guidelines); a finding that does not apply carries a checkov:skip with its reason in the
# template, so any other finding fails.
security-scan: $(CHECKOV_VENV)/.installed
	$(CHECKOV_VENV)/bin/checkov --file template.yaml --framework cloudformation --skip-download --compact --quiet

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
	rm -rf $(VENV) $(SAM_VENV) $(CHECKOV_VENV) node_modules .aws-sam .capctl .coverage .mypy_cache .ruff_cache .pytest_cache
