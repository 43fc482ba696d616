# Two entry points: `make demo` runs the main job, `make test` passes the tests.
# Both create .venv and install the project into it on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[platform,hil,load,web,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fleetrig demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/lifecycle.py --devices 1000

clean:
	rm -rf $(VENV) .reports .fleetrig
