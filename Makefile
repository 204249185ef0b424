# Two commands do all set-up on a fresh machine with Python 3.11:
#   make demo   -> venv, torch (TORCH_SPEC, CPU wheel by default) first, the project, then `loc-unlearn demo`
#   make test   -> the same set-up, then the test suite (the default run skips tests marked slow)
PY ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup demo test test-all bench clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build (ENVIRONMENT.md).
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

demo: setup
	$(BIN)/loc-unlearn demo $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

test-all: setup
	$(BIN)/python -m pytest -q -m "" $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
