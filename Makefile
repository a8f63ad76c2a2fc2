# Two entry points for a fresh machine with only Python:
#   make reproduce   set up .venv, then run the study on the embedded default model
#   make test        set up .venv, then check the import layers and run the test suite
# TORCH_SPEC pins the CPU wheel on CPU-only machines; GPU users: make TORCH_SPEC=torch ...
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
DATA ?= ../shared/data/QNLI
ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.qtool-installed

.PHONY: setup test reproduce lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/lint-imports --no-cache
	QTOOL_DATA=$(DATA) $(BIN)/python -m pytest -q

reproduce: $(STAMP)
	$(BIN)/qtool reproduce --data $(DATA) $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check qtool tests

clean:
	rm -rf $(VENV)
