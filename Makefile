# The two commands from the README do their own set-up:
#   make simulate   -> the default 16-node simulation (results in runs/default, replaced on a rerun)
#   make test       -> the whole test suite
#   make test-fast  -> the suite without the tests marked slow (multi-process runs, whole simulations)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup simulate test test-fast lint bench clean

setup: $(STAMP)

# torch goes in first, pinned, so that resolving the project never picks a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

simulate: $(STAMP)
	$(BIN)/p2pfl simulate --out runs/default --overwrite
	$(BIN)/p2pfl report runs/default

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check p2pfl tests scripts
	$(BIN)/mypy p2pfl

bench: $(STAMP)
	$(BIN)/python scripts/bench_overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache
