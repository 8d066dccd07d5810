# The two commands: `make run` (platform on embedded defaults) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_WORKERS ?= auto

SDK := sdk-js
CONSOLE := control_plane/console

.PHONY: run test install migrate openapi openapi-check lint clean bench sdk console

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Livora needs Python 3.11 or newer; set PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing Livora and its test tools into $(VENV)…"
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

## run: install, migrate the embedded SQLite database under ./var and serve on http://127.0.0.1:8000
run: $(STAMP) console
	$(BIN)/livora run

## test: lint, the browser SDK (build, size budget, unit tests), then the whole suite (SQLite and
## PostgreSQL, memory and Redis drivers, the SDK in headless Chromium)
test: $(STAMP) lint sdk console
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

$(SDK)/node_modules/.package-lock.json: $(SDK)/package-lock.json
	cd $(SDK) && npm ci --no-audit --no-fund

## sdk: the browser SDK: npm packages, build (fails over its size budget), unit tests
sdk: $(SDK)/node_modules/.package-lock.json
	cd $(SDK) && npm run build && npm test

$(CONSOLE)/static/vendor/htmx.min.js: $(CONSOLE)/package-lock.json $(CONSOLE)/vendor.mjs
	cd $(CONSOLE) && npm ci --no-audit --no-fund && npm run build

## console: the admin console's front-end assets (htmx), from the npm registry into its static/vendor folder
console: $(CONSOLE)/static/vendor/htmx.min.js

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

## bench: every performance figure in one table, beside its target and its peer measured in the same run (the
## decode-only ceiling endpoint, one worker process, ClickHouse via chdb); bench/*.py run alone for detail
bench: $(STAMP)
	$(BIN)/python bench/summary.py $(BENCH_ARGS)
