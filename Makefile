# py-lever: make install | make run | make test | make test-quick | make bench | make lint
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-quick bench lint check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/python -m sandbox.stack

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Everything but the real-process fault, load and durability runs (marked slow): about half the time.
test-quick: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m bench.run

lint: install
	$(BIN)/ruff check .

check: install
	$(BIN)/python cli.py check

clean:
	rm -rf $(VENV) .data build *.egg-info
