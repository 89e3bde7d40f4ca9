# telerad — the two Quick start commands are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export TELERAD_HOME ?= $(CURDIR)/telerad-data
PG_TEST_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test
APT_PACKAGES := dcmtk dicom3tools openssl

.PHONY: run test venv system-deps services lint typecheck test-sqlite test-postgres

$(BIN)/telerad: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/telerad

## Set up, load demo data on the embedded defaults (SQLite + local files in ./telerad-data) and serve.
run: venv
	$(BIN)/telerad init
	$(BIN)/telerad demo
	$(BIN)/telerad serve

## Set up everything the tests need and run the whole suite on SQLite, then on PostgreSQL.
test: system-deps venv lint typecheck test-sqlite services test-postgres

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

services:
	scripts/ensure-postgres

lint: venv
	$(BIN)/ruff check src tests bench

typecheck: venv
	$(BIN)/mypy src

test-sqlite: venv
	TELERAD_TEST_DATABASE_URL= $(BIN)/pytest -q

test-postgres: venv
	TELERAD_TEST_DATABASE_URL=$(PG_TEST_URL) $(BIN)/pytest -q
