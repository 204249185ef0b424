"""`accelerate launch` with 2 CPU processes (gloo) on a whole CLI stage gives the same model as 1 process:
collective stages are built by all processes together, files are written once (runs.cached)."""
import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from helpers import MINI


def _finetune(runs, launcher):
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "LOC_UNLEARN_QUIET": "1", "OMP_NUM_THREADS": "1"}
    cmd = [*launcher, "-m", "loc_unlearn.cli", "finetune", f"runs_dir={runs}", *MINI, "finetune.train.epochs=2"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    (ft,) = [d for d in (runs / "finetune").iterdir() if (d / "manifest.json").is_file()]
    return ft


def test_two_process_finetune_stage_matches_one(tmp_path):
    one = _finetune(tmp_path / "one", [sys.executable])
    two = _finetune(tmp_path / "two", [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                                       "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                                       "--dynamo_backend", "no"])
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m1["train_log"][-1]["processes"] == 1 and m2["train_log"][-1]["processes"] == 2
    assert abs(m1["train_log"][-1]["loss"] - m2["train_log"][-1]["loss"]) < 1e-5
    w1 = load_file(str(one / "model" / "model.safetensors"))
    w2 = load_file(str(two / "model" / "model.safetensors"))
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)
    # the two-process run wrote one complete, verifiable run directory
    from loc_unlearn.runs import Run

    Run(two, "finetune", {}).verify()
