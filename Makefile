# histo: `make demo` and `make test` work on a fresh machine; both install into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install: $(VENV)/.installed  ## create .venv and install histo with its dev extras

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'
	touch $@

demo: install  ## train V1-B0 for a few epochs on the built-in synthetic dataset (CPU, minutes)
	$(BIN)/histo-train experiment=demo

test: install  ## run the test suite
	$(BIN)/python -m pytest

lint: install  ## ruff
	$(BIN)/ruff check histo tests scripts

clean:  ## remove run outputs (keeps .venv)
	rm -rf outputs/* .pytest_cache
