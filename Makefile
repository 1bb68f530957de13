# The README's commands. Everything runs from the repository's own virtualenv (.venv); no activation needed.
LAKE_HOME ?= $(CURDIR)/.lake
PYTHON ?= python3
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
export LAKE_HOME
export DAGSTER_HOME := $(LAKE_HOME)/dagster

.PHONY: setup demo test ui bench clean

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

## One command: install, then run every test.
test: setup
	$(PY) -m pytest -q -p no:cacheprovider

## The Dagster UI on http://127.0.0.1:3000 (sensors and schedules run by themselves).
ui: setup
	$(VENV)/bin/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

bench: setup
	$(PY) bench/merge.py
	$(PY) bench/startup.py

clean:
	rm -rf $(LAKE_HOME)
