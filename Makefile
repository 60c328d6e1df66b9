# The two commands of the quick start: `make demo` and `make test`. Both create the virtual
# environment in .venv on first use; torch is pinned through constraints.txt (the CPU build).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORE_STAMP := $(VENV)/.installed-core

.PHONY: demo test lint typecheck proto bench bench-secagg bench-dp bench-async clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	DS_BUILD_OPS=0 $(BIN)/pip install --quiet -c constraints.txt -e '.[dev,flower,llm,ray,tensorboard,bench]'
	touch $(STAMP)

# The demo needs the package alone: no development, Flower or large-model extras.
$(CORE_STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e .
	touch $(CORE_STAMP)

demo: $(CORE_STAMP)
	$(BIN)/quorum sim --config examples/heart_disease/sim.toml --report demo-output/report.json

lint: $(STAMP)
	$(BIN)/ruff check quorum tests bench examples
	$(BIN)/ruff format --check quorum tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy --strict quorum

test: lint typecheck
	$(BIN)/python -m pytest -q

proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

bench: $(STAMP)
	$(BIN)/python bench/round_time.py

bench-secagg: $(STAMP)
	$(BIN)/python bench/secagg_time.py --quorum-rounds 41

bench-dp: $(STAMP)
	$(BIN)/python bench/dp_time.py --json bench/results/dp_time.json

bench-async: $(STAMP)
	$(BIN)/python bench/async_vs_sync.py --json bench/results/async_vs_sync.json

clean:
	rm -rf $(VENV) demo-output .mypy_cache .ruff_cache .pytest_cache
