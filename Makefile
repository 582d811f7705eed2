# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv on first use and install recoup into it; nothing else is needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)  ## train `small` on addition, print EM at every stopping point
	$(BIN)/python -m experiments.demo --out runs/demo

test: $(STAMP)  ## the default test suite (slow checks excluded)
	$(BIN)/python -m pytest -q

bench: $(STAMP)  ## benchmarks, written to docs/benchmarks.md
	$(BIN)/python -m experiments.bench

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
