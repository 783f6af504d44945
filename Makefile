# The two commands of the README's quick start are `make demo` and `make test`.
# Both create .venv, install torch ($(TORCH_SPEC)) and the package with its `lab` and `dev` extras into it (everything
# the demo and the tests need). pip takes torch from wherever it is configured to look: on Linux, PyPI's torch is the
# CUDA build (several GB of nvidia-* wheels); set TORCH_INDEX=https://download.pytorch.org/whl/cpu for the CPU build
# (macOS and Windows wheels are CPU builds).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
OUT ?= demo_out

.PHONY: install demo test test-slow test-all lint bench

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[lab,dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/nnteleport demo --out $(OUT)

test: install
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: install
	$(BIN)/python -m pytest -q -m slow

test-all: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks

bench: install
	$(BIN)/python -m benchmarks
