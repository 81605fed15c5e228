# The two commands of the README: `make demo` and `make test`. Everything else builds on them.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/var/dagster_home

.PHONY: install demo test lint format dev process bench coverage clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,ui]'
	touch $(STAMP)

install: $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

demo: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/backup-pipeline demo

test: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# The test suite under coverage.py, configured in setup.cfg (data under var/coverage).
coverage: $(STAMP)
	$(BIN)/coverage run -m pytest
	$(BIN)/coverage report

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

dev: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/backup-pipeline prepare-instance
	$(BIN)/dagster dev -w workspace.yaml

process: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/backup-pipeline process

PROFILE ?= medium
BACKENDS ?= file,gcs

bench: $(STAMP)
	$(BIN)/python -m bench.run --profile $(PROFILE) --backends $(BACKENDS)
	$(BIN)/python -m bench.run --sensor
	$(BIN)/python -m bench.run --report

clean:
	rm -rf var
