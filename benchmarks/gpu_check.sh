#!/usr/bin/env bash
# The prepared GPU check (issues 13, 14, 20): benchmarks/gpu_check.py on one GPU, <= 8 minutes on an H200, ending
# with ONE table over four sections (details in that file's docstring):
#   (a) the masked step at Llama-3.1-8B shape (random bf16 weights): MaskedDelta vs W_down * grad mask vs all
#       parameters, step time and peak memory next to `loc-unlearn plan`'s numbers    (alone, ~3 min at most)
#   (b) evaluation at 8B shape: token_metrics vs a bare forward loop over the same batches (alone, ~1 min)
#   (c) a shortened `loc-unlearn demo` with device=auto, every stage's recorded device (cuda), beside the same
#       demo with device=cpu                                                    } side by side, ~3 min
#   (d) masked unlearning under FSDP2 (accelerate launch, fsdp.yaml, 1 process) vs no engine, float32 and bf16 }
# Each section has its own processes and time limit (one failure loses only itself). Needs a python with torch,
# transformers and accelerate (the project itself need not be installed: src/ goes on PYTHONPATH; deepspeed is
# not needed). Packages that machine lacks travel as wheels:
#
#   make gpu-wheels          # here, once: pure-python wheels into .whl/ (git-ignored, ~3 MB)
#   then on the GPU machine: bash benchmarks/gpu_check.sh [gpu_check.py options, e.g. --sections step,eval]
#   (device tool: carry [".whl"], command "bash benchmarks/gpu_check.sh", timeout_s 540)
#
# Wheels in .whl/ are installed with --no-index into /tmp/site (nothing is fetched). Output: stdout, plus
# summary.md (the Markdown block for benchmarks/RESULTS.md), results.json and logs in $OUT (or runs/gpu-check).
# `bash benchmarks/gpu_check.sh --cpu` is the dry run the test suite runs (tests/test_gpu_check.py, ~30-40 s):
# tiny shapes on the CPU, (c) skipped, (d) as FSDP2 over 2 gloo processes (configs/accelerate/cpu_fsdp2_2proc.yaml).
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
