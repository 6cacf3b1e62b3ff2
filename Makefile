# py-lever: make install | make run | make test | make test-fast | make test-quick | make bench | make lint
# Tests come in tiers, one folder each under tests/, marked by folder (tests/conftest.py):
#   tests/unit         no server at all                                   (unit)
#   tests/workflows    Temporal dev/time-skipping server + workers, Replayer (workflows)
#   tests/integration  the whole stack in-process (session `stack` fixture) (integration)
#   tests/system       real processes: faults, load, durability, make run (system, slow)
# Select a tier by folder or marker, e.g. `make test PYTEST_ARGS="-m workflows"`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast test-quick bench lint fmt check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/python -m sandbox.stack

# All four tiers (CI: make test PYTEST_ARGS="-q").
test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# unit + workflows: under a minute on 2 cores.
test-fast: install
	$(BIN)/python -m pytest tests/unit tests/workflows $(PYTEST_ARGS)

# Everything but `slow`, which is now exactly the system tier: unit + workflows + integration.
test-quick: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m bench.run

# The gates CI runs: lint rules, formatting, types (mypy: pyproject's [tool.mypy]).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

check: install
	$(BIN)/python cli.py check

clean:
	rm -rf $(VENV) .data build *.egg-info
