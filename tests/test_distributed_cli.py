"""`accelerate launch` with 2 CPU processes (gloo) on a whole CLI stage gives the same model as 1 process,
under DDP, FSDP2 and DeepSpeed ZeRO-3: collective stages are built by all processes together, files are
written once (runs.cached). `finetune` here trains twice in each process (the tiny base, then theta_r), so
it also checks that one training's engine state does not leak into the next stage (under ZeRO-3 it did:
the next model loaded already partitioned)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import MINI

ACC = Path(__file__).parent.parent / "configs" / "accelerate"
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]
LAUNCHERS = {
    "ddp": [*LAUNCH, "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no"],
    "fsdp2": [*LAUNCH, "--config_file", str(ACC / "cpu_fsdp2_2proc.yaml")],
    "deepspeed": [*LAUNCH, "--config_file", str(ACC / "cpu_zero3_2proc.yaml")],
}


def _finetune(runs, launcher, engine="none"):
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "LOC_UNLEARN_QUIET": "1", "OMP_NUM_THREADS": "1"}
    if engine == "deepspeed":  # accelerate would silently run DDP instead (train/engine.py)
        env.pop("ACCELERATE_USE_CPU")
    cmd = [*launcher, "-m", "loc_unlearn.cli", "finetune", f"runs_dir={runs}", *MINI, "finetune.train.epochs=2"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ACC.parent.parent)
    assert p.returncode == 0, p.stderr[-3000:]
    (ft,) = [d for d in (runs / "finetune").iterdir() if (d / "manifest.json").is_file()]
    return ft


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    return _finetune(tmp_path_factory.mktemp("one"), [sys.executable])


@pytest.mark.parametrize("engine", ["ddp", "fsdp2", "deepspeed"])
def test_two_process_finetune_stage_matches_one(one, tmp_path, engine):
    if engine == "deepspeed":
        pytest.importorskip("deepspeed")
    two = _finetune(tmp_path / "two", LAUNCHERS[engine], engine)
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
