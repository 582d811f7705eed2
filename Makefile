# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv on first use and install recoup into it; nothing else is needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo flagship test bench chaos lint clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)  ## the flagship, quick: addition, 2 seeds, the tuned recipes at 62% of B, 2 seeds at once (8 min 34 s on 2 cores from a fresh clone, .venv build included, measured)
	$(BIN)/python -m experiments.early_stop_recovery --quick --jobs 2

flagship: $(STAMP)  ## the flagship, full: 3 tasks x 5 seeds, 2 at a time, writes docs/results.md (needs each task tuned: experiments/tuned.json)
	$(BIN)/python -m experiments.early_stop_recovery --jobs 2

TEST_WORKERS ?= 2  # CI's cores; each worker trains its own session fixtures
test: $(STAMP)  ## the default test suite (slow checks excluded), TEST_WORKERS processes at once (pytest-xdist)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope --durations=15

bench: $(STAMP)  ## benchmarks, written to docs/benchmarks.md
	$(BIN)/python -m experiments.bench

chaos: $(STAMP)  ## long reliability checks: the slow tests, kills, corruption, disk full, fuzzing, server load -> docs/reliability.md
	$(BIN)/python -m pytest -m slow tests
	$(BIN)/python -m experiments.chaos

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
