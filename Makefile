# The README's commands. Everything runs from the repository's own virtualenv (.venv); no activation needed.
LAKE_HOME ?= $(CURDIR)/.lake
PYTHON ?= python3
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
export LAKE_HOME

.PHONY: setup demo lint test test-fast ui bench bench-latency bench-scale bench-tpch bench-maintenance clean

$(VENV)/.installed: pyproject.toml scripts/install_system_deps.sh
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	bash scripts/install_system_deps.sh
	touch $@

# The lake's Dagster instance ($DAGSTER_HOME, default $LAKE_HOME/dagster) gets this checkout's dagster.yaml.
setup: $(VENV)/.installed
	@$(PY) -m lake_assets.instance >/dev/null

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

## The Dagster UI on http://127.0.0.1:3000 (sensors and schedules run by themselves), launched from
## the instance directory where Dagster reads dagster.yaml (lake_assets/dev.py).
UI_PORT ?= 3000
ui: setup
	$(PY) -m lake_assets.dev --host 127.0.0.1 --port $(UI_PORT)

## Seconds from a landed file to its source-aligned and consumer tables, through the real daemon.
bench-latency: setup
	$(PY) bench/latency.py

bench: setup
	$(PY) bench/merge.py
	$(PY) bench/startup.py

## The merge at scale (1M-20M rows, cow/mor/auto, Spark, delta-rs in a scratch venv); ~20 min on 2 cores.
bench-scale: setup
	$(PY) bench/scale.py

## One TPC-H SF1 CDC round (3% of lineitem's 6M rows) merged in process: time and peak memory.
bench-tpch: setup
	$(PY) bench/tpch.py

## 200 merges of 1,000 changes into a 5M-row table, without and with maintenance; ~20 min on 2 cores.
bench-maintenance: setup
	$(PY) bench/maintenance.py

clean:
	rm -rf $(LAKE_HOME)
