# The two commands of the README: `make demo` and `make test`. Everything else builds on them.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/var/dagster_home

.PHONY: install demo test zip-clients lint format dev process bench coverage clean

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

# The zip clients the archive's compatibility tests read every zip with (unzip, 7z, bsdtar):
# installed from Debian's packages when they are missing and this is root with apt-get; anywhere
# else those tests skip, naming the package to install.
ZIP_CLIENT_PACKAGES := unzip:unzip 7z:p7zip-full bsdtar:libarchive-tools
zip-clients:
	@missing=""; for pair in $(ZIP_CLIENT_PACKAGES); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing$$missing for the zip compatibility tests"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null \
	    || echo "could not install$$missing: those tests will skip"; \
	fi

test: $(STAMP) zip-clients
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
