# Two set-up commands on a fresh clone: `make demo` and `make test`. Each builds .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU build of torch first: a bare `torch` would pull a CUDA build of several GB.
TORCH  ?= torch==2.13.0
# Where pip looks for it: empty on this project's machines (the CPU wheel is on their disk); elsewhere e.g.
# TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu" (or .../whl/cu124 for a CUDA build).
TORCH_INDEX ?=
EXTRAS ?= onnx,demo,dev

.PHONY: demo test lint format clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" $(TORCH_INDEX)
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/stdtrt demo

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	PYTHON=$(BIN)/python tests/tools/tensorrt_bindings.sh
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) stdtrt-demo .pytest_cache .ruff_cache
