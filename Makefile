# querytrail developer targets. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
QT := $(VENV)/bin/querytrail
STAMP := $(VENV)/.installed
PACKAGES := querytrail schemas ingress processors sinks infra console
LINT_PATHS := $(PACKAGES) tests bench  # code only: ruff would also reformat python blocks in docs/*.md

.DEFAULT_GOAL := help
.PHONY: help install unit test lint format up down status smoke demo bench constraints clean reports-sql

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,spark,local]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install querytrail with the pinned constraints

unit: $(STAMP) ## the fast loop: the tests that need no broker, emulator, IdP or browser (not `slow`)
	$(PY) -m pytest -q -m "not integration and not slow" tests

test: $(STAMP) ## run every test (unit + integration against a real Kafka and fakesnow)
	$(PY) -m pytest

lint: $(STAMP) ## ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy $(PACKAGES)

format: $(STAMP) ## ruff format + autofix
	$(VENV)/bin/ruff format $(LINT_PATHS)
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)

up: $(STAMP) ## start the local stack (Kafka, topics, fakesnow + demo data, services)
	$(QT) up

down: $(STAMP) ## stop everything `up` started
	$(QT) down

status: $(STAMP) ## what the local stack runs
	$(QT) status

smoke: $(STAMP) ## check the running stack end to end
	$(QT) smoke

demo: $(STAMP) ## start the local stack if needed (with the demo's settings) and play the demo
	$(QT) demo

bench: $(STAMP) ## codec benchmark: Avro encode+decode next to json
	$(PY) bench/codec.py

reports-sql: $(STAMP) ## regenerate infra/sql/{spark,trino}/ from the DuckDB report source (infra/sql/duckdb/)
	$(PY) -m sinks.report_sql --write

constraints: ## refresh constraints.txt from the current venv (after a dependency change passed the tests)
	{ echo '# pip freeze of the venv the tests passed in (minus querytrail itself); refresh with `make constraints`.'; \
	  $(PY) -m pip freeze --exclude-editable | grep -v '^querytrail'; } > constraints.txt

clean: ## remove the venv and caches (not ~/.querytrail)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
