"""Fine-tuning and injection resume from their checkpoints (issue 14): a finetune killed with SIGKILL
mid-way restarts from its last checkpoint, not from step 0, and ends bit-identical to an uninterrupted
run; every preset checkpoints finetune and inject."""
import json

import pytest

from helpers import MINI, run_cli

EVERY = "finetune.train.checkpoint_every=0.5"


def _finetune_cli(runs_dir, fault=None):
    return run_cli(["finetune", *MINI, EVERY], runs_dir, fault, quiet="0")


@pytest.mark.parametrize("preset", ["tiny", "smol", "paper-llama3.1-8b", "paper-olmo2-7b"])
def test_presets_checkpoint_finetune_and_inject(preset):
    from loc_unlearn.config import build_config

    cfg = build_config(overrides=[f"preset={preset}"])
    for section in (cfg.finetune, cfg.inject):
        every = section.train.checkpoint_every
        assert 0 < every <= section.train.epochs / 2, f"{preset}: checkpoint_every={every} gives no resume point"


def test_killed_finetune_resumes_bit_identical(tmp_path, mini_cfg):
    from loc_unlearn import stages
    from loc_unlearn.utils import sha256_file

    for d in ("clean", "killed"):  # data + base model first: the fault counts finetune steps only
        stages.tiny_base(mini_cfg(tmp_path / d))
    p = _finetune_cli(tmp_path / "clean")
    assert p.returncode == 0, p.stderr[-2000:]
    clean = next((tmp_path / "clean").glob("finetune/*"))
    total = json.loads(max(clean.glob("train/ckpt-*/trainer_state.json"), key=lambda f: f.stat().st_mtime)
                       .read_text())["total_steps"]
    assert len(list(clean.glob("train/ckpt-*"))) >= 3, "checkpoints every 0.5 epoch over 2 epochs"

    p = _finetune_cli(tmp_path / "killed", fault=f"train_step:{total - 1}")
    assert p.returncode == -9, "the fault point was not reached: the test would prove nothing"
    p = _finetune_cli(tmp_path / "killed")
    assert p.returncode == 0, p.stderr[-2000:]
    out = p.stdout + p.stderr
    assert "resuming learn from" in out and f"/{total})" in out and "(step 0/" not in out, out[-2000:]
    killed = next((tmp_path / "killed").glob("finetune/*"))
    assert killed.name == clean.name
    assert sha256_file(killed / "model/model.safetensors") == sha256_file(clean / "model/model.safetensors")
