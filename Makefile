# The two commands of the README, and the tooling behind them.
# `make run`: the whole local stack (Kafka, Redis, worker, API, demo traffic). `make test`: the tests.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint typecheck check clean down

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/ai-analytics stack up

down: $(STAMP)
	$(BIN)/ai-analytics stack down

# Lint and type checks first (seconds), then the suite against a real Kafka and Redis.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

# Your own loop: lint, types and the tests that need no servers (seconds). CI runs `make test`.
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -m "not integration"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

check: test

clean:
	rm -rf .stack .pytest_cache .mypy_cache .ruff_cache
