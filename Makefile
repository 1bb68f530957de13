# The README's commands. Everything runs from the repository's own virtualenv (.venv); no activation needed.
LAKE_HOME ?= $(CURDIR)/.lake
PYTHON ?= python3
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
export LAKE_HOME
export DAGSTER_HOME := $(LAKE_HOME)/dagster

.PHONY: setup demo lint test test-fast ui bench bench-scale clean

$(VENV)/.installed: pyproject.toml scripts/install_system_deps.sh
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	bash scripts/install_system_deps.sh
	touch $@

setup: $(VENV)/.installed
	@mkdir -p $(DAGSTER_HOME) && cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

## One command: install, then run the demo source through every layer on the local lake.
demo: setup
	$(PY) -m demo --reset

## Lint and types, as configured in pyproject.toml ([tool.ruff], [tool.mypy]); the tools are dev pins.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

## One command: install, then run every test.
test: setup
	$(PY) -m pytest -q -p no:cacheprovider

## The quick loop while editing: every test but Spark's and the SIGKILL crash tests.
test-fast: setup
	$(PY) -m pytest -q -p no:cacheprovider -m "not spark" --ignore=tests/test_crash_recovery.py

## The Dagster UI on http://127.0.0.1:3000 (sensors and schedules run by themselves).
ui: setup
	$(VENV)/bin/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

bench: setup
	$(PY) bench/merge.py
	$(PY) bench/startup.py

## The merge at scale (1M-20M rows, cow/mor/auto, Spark, delta-rs in a scratch venv); ~20 min on 2 cores.
bench-scale: setup
	$(PY) bench/scale.py

clean:
	rm -rf $(LAKE_HOME)
