# slotwatch — the commands a new user needs.  `make help` lists them.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: help install test test-fast demo bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP)  ## create .venv and install slotwatch with its test tools

test: $(STAMP)  ## run the whole test suite (what CI runs)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)  ## the tests that need no broker
	$(BIN)/python -m pytest -q -m "not kafka and not slow"

demo: $(STAMP)  ## local broker + simulated fleet + worker + live view (Ctrl-C stops)
	$(BIN)/slotwatch demo $(ARGS)

bench: $(STAMP)  ## run the benchmarks, write benchmarks/results/
	$(BIN)/python -m benchmarks $(ARGS)

clean:  ## remove the virtual environment and local outputs
	rm -rf $(VENV) out demo-data .pytest_cache
