# Two entry points that work on a fresh machine:  `make run`  and  `make test`  (`make test-fast`: unit tests only).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
CORES ?= 2
BIN := $(VENV)/bin

.PHONY: run test test-fast report lint

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/snakemake -c$(CORES)

report: $(BIN)/.installed
	$(BIN)/snakemake -c$(CORES) --report results/report.html

#: the fast tier: unit tests only, no Snakemake runs, no long ones (markers in pyproject.toml)
FAST_TIER := not workflow and not slow

test: $(BIN)/.installed
	$(BIN)/pytest

test-fast: $(BIN)/.installed
	$(BIN)/pytest -m "$(FAST_TIER)"

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check .
