# One entry point for the things a developer and CI do.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc)

.PHONY: install test check lint typecheck demo bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Installs overnight with the embedded model, tracing and everything the tests need.
install: $(BIN)/python
	$(BIN)/pip install -q -e '.[local,s3,otel,test]'

lint:
	$(BIN)/ruff check overnight tests bench
	$(BIN)/ruff format --check overnight

typecheck:
	$(BIN)/mypy overnight tests/support

check: lint typecheck

# Everything on SQLite + a local directory, then the acceptance suite again on the
# scale-out stores: PostgreSQL (127.0.0.1:5432) + S3 (moto's server, started by the tests).
test: install check
	$(BIN)/pytest -q
	$(BIN)/pytest -q tests/acceptance --pg-s3

demo: $(BIN)/python
	$(BIN)/pip install -q -e '.[local]'
	$(BIN)/overnight demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
