#!/usr/bin/env bash
# The prepared GPU check (issues 13, 14): benchmarks/gpu_check.py's three sections on one GPU, <= 8 minutes
# on an H200 (see that file's docstring). Needs a python with torch, transformers and accelerate (the project
# itself need not be installed: src/ goes on PYTHONPATH). Packages that machine lacks travel as wheels:
#
#   make gpu-wheels          # here, once: pure-python wheels into .whl/ (git-ignored, ~3 MB)
#   then on the GPU machine: bash benchmarks/gpu_check.sh [--cpu-table FILE] [other gpu_check.py options]
#   (device tool: carry [".whl"], command "bash benchmarks/gpu_check.sh", timeout_s 540)
#
# Wheels in .whl/ are installed with --no-index into /tmp/site (nothing is fetched). Output: stdout, plus
# summary.md, results.json and logs in $OUT (or runs/gpu-check). `bash benchmarks/gpu_check.sh --cpu` is the
# dry run the test suite runs (tests/test_gpu_check.py).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; then
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "gpu_check.sh: installing .whl/*.whl failed; continuing without them" >&2
  fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 LOC_UNLEARN_QUIET=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PY" benchmarks/gpu_check.py "$@"
