# The targets a newcomer guesses. Everything installs itself from PyPI on first use:
# a private uv in .tools/, the locked dependencies in .venv/.

PYTHON ?= python3
UV_VERSION := 0.13.9
UV := .tools/bin/uv
BIN := .venv/bin
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := .venv

.PHONY: install run test test-fast lint format typecheck check bench clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --quiet
	@touch $@

install: .venv/.synced

## Run the service in development mode on http://127.0.0.1:8000
run: install
	$(BIN)/nicecard dev

## Run the whole test suite (PostgreSQL tests need NICECARD_TEST_POSTGRES_URL)
test: install
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -x -q -m "not postgres and not browser"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: install
	$(BIN)/mypy

check: lint typecheck test

bench: install
	@ls bench/*.py | sed 's/^/  /'; echo "run one with: $(BIN)/python bench/<name>.py"

clean:
	rm -rf .venv .tools .mypy_cache .ruff_cache .pytest_cache .hypothesis
