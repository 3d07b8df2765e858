# django-hookpost: `make demo` shows it working, `make test` runs everything CI runs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON311 := $(shell scripts/find-python 3.11)
PYTHON312 := $(shell scripts/find-python 3.12)
VENV := .venv
VENV6 := .venv-django6
PY := $(VENV)/bin/python
PY6 := $(VENV6)/bin/python
PYTEST_ARGS ?=

.PHONY: help demo test lint services test-sqlite test-postgresql test-django6 bench soak format clean

help:
	@echo "make demo    run the examples: changes become signed webhooks to a local receiver, then to a second Django project (SQLite)"
	@echo "make test    lint + the whole suite on SQLite and PostgreSQL (Django 5.2, and 6.x if Python 3.12 exists)"
	@echo "make soak    the reliability suite at full size (100,000 events, long outages), SQLite and PostgreSQL"
	@echo "make bench   benchmarks: capture cost of a 10,000-row delete; delivery throughput and latency; receiver webhooks/s; claims behind a dead endpoint"

$(VENV)/.installed: pyproject.toml
	@test -n "$(PYTHON311)" || { echo "Python 3.11 not found" >&2; exit 1; }
	$(PYTHON311) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint,api,celery]'
	touch $@

$(VENV6)/.installed: pyproject.toml
	$(PYTHON312) -m venv $(VENV6)
	$(PY6) -m pip install --quiet --upgrade pip
	$(PY6) -m pip install --quiet -e '.[test,api,celery]' 'Django>=6.0,<7'
	touch $@

services:
	@scripts/ensure-services
	@scripts/ensure-chromium

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) example/manage.py makemigrations --check --dry-run
	MIRROR_SQLITE_PATH=$${TMPDIR:-/tmp}/hookpost-mirror-check.sqlite3 $(PY) example/inbound_manage.py makemigrations --check --dry-run

test-sqlite: $(VENV)/.installed services
	HOOKPOST_DB=sqlite $(VENV)/bin/pytest $(PYTEST_ARGS)

test-postgresql: $(VENV)/.installed services
	HOOKPOST_DB=postgresql $(VENV)/bin/pytest $(PYTEST_ARGS)

# Django 6.x needs Python 3.12+: run the suite there too when such an interpreter exists.
# The reliability suite (worker processes, signals, outages) runs once per database, on the
# baseline: it tests hookpost's processes, not Django's API, and CI time is bounded.
DJANGO6_ARGS := --ignore=tests/reliability
test-django6: services
ifneq ($(PYTHON312),)
	$(MAKE) $(VENV6)/.installed
	HOOKPOST_DB=sqlite $(VENV6)/bin/pytest $(DJANGO6_ARGS) $(PYTEST_ARGS)
	HOOKPOST_DB=postgresql $(VENV6)/bin/pytest $(DJANGO6_ARGS) $(PYTEST_ARGS)
else
	@echo "No Python 3.12 on this machine: skipping the Django 6.x matrix entry"
endif

test: lint test-sqlite test-postgresql test-django6

demo: $(VENV)/.installed
	$(PY) example/demo.py && $(PY) example/demo_two_projects.py

soak: $(VENV)/.installed services
	rm -f docs/reliability-soak.jsonl
	HOOKPOST_SOAK=1 HOOKPOST_RELIABILITY_REPORT=$(CURDIR)/docs/reliability-soak.jsonl HOOKPOST_DB=postgresql $(VENV)/bin/pytest tests/reliability $(PYTEST_ARGS)
	HOOKPOST_SOAK=1 HOOKPOST_RELIABILITY_REPORT=$(CURDIR)/docs/reliability-soak.jsonl HOOKPOST_DB=sqlite $(VENV)/bin/pytest tests/reliability $(PYTEST_ARGS)

bench: $(VENV)/.installed services
	$(PY) bench/capture.py
	$(PY) bench/delivery.py
	$(PY) bench/receiver.py
	$(PY) bench/claim.py
	$(PY) bench/record.py

format: $(VENV)/.installed
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) $(VENV6) .pytest_cache .mypy_cache .ruff_cache example/db*.sqlite3
