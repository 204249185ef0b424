# Two commands do all set-up on a fresh machine with Python 3.11:
#   make demo   -> venv, torch (TORCH_REQ, CPU wheel by default) first, the project, then `loc-unlearn demo`
#   make test   -> the same set-up, then the test suite (the default run skips tests marked slow)
PY ?= python3
VENV ?= .venv
TORCH_REQ ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup demo test test-all bench clean gpu-wheels
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q $(TORCH_REQ)
	# constraints.txt: the versions the recorded numbers come from (float results change with them)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"
	touch $@

demo: setup
	$(BIN)/loc-unlearn demo $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

test-all: setup
	$(BIN)/python -m pytest -q -m "" $(ARGS)

# Pure-python wheels the GPU machine's python lacks (benchmarks/gpu_check.sh installs .whl/ with --no-index):
# rouge-score (ROUGE-L in every evaluation; sdist only, so built here) and its nltk; submitit and gguf for the
# slurm executor and GGUF models. .whl/ is git-ignored; carry it to the machine.
GPU_WHEELS ?= nltk==3.10.4 submitit==1.5.4 gguf==0.19.0
gpu-wheels:
	mkdir -p .whl
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)
	$(PY) -m pip wheel -q --no-deps -w .whl rouge-score==0.1.2
	ls -l .whl

clean:
	rm -rf $(VENV) runs .pytest_cache
