# recaudit: one command to set up and test, one to set up and run the demo.
#   make test   create .venv if missing, install pinned dependencies, lint, type-check, run tests
#   make demo   same set-up, then run the main job on embedded defaults

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.recaudit-installed
PYTEST_ARGS ?=

.PHONY: setup lint test test-fast demo bench clean

setup: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	@# RecBole 1.2.1 declares ray<=2.6.3, which no longer imports: install it alone,
	@# its real runtime needs are in requirements.txt (see docs/install.md)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps recbole==1.2.1
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy simulator recommenders auditor dashboards service recaudit

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

demo: setup
	@bash scripts/demo.sh

bench: setup
	$(BIN)/python bench/simulator.py --users 10000 --items 1000 --dim 16 --slate 10 --steps 50

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
