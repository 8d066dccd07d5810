# The two commands: `make run` (platform on embedded defaults) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_WORKERS ?= auto

.PHONY: run test install migrate openapi openapi-check lint clean bench

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Livora needs Python 3.11 or newer; set PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing Livora and its test tools into $(VENV)…"
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

## run: install, migrate the embedded SQLite database under ./var and serve on http://127.0.0.1:8000
run: $(STAMP)
	$(BIN)/livora run

## test: lint, then the whole suite (SQLite and PostgreSQL, memory and Redis drivers)
test: $(STAMP) lint
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

migrate: $(STAMP)
	$(BIN)/livora migrate

openapi: $(STAMP)
	$(BIN)/livora openapi

openapi-check: $(STAMP)
	$(BIN)/livora openapi --check

clean:
	rm -rf $(VENV) var .pytest_cache

## bench: performance figures (ingestion acks and latency per stream driver, pipeline into the lake)
bench: $(STAMP)
	$(BIN)/python bench/ingest.py
