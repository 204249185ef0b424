"""Fault injection: a study killed with SIGKILL at several points (mid training, mid checkpoint save,
mid evaluation, before a run's manifest) resumes and ends with exactly the numbers of an uninterrupted
run; damaged artifacts are refused; a full disk never leaves an artifact that is taken as complete."""
import errno
import json
from pathlib import Path

import pytest

from loc_unlearn.errors import CheckpointError, UserError, WriteError

from helpers import MINI, run_cli

# Each kill happens in a later run than the previous one's, so together they cover every kind of stage.
FAULTS = ["train_step:30", "checkpoint_save:3", "evaluate_checkpoint:2", "before_manifest:3", "train_step:5"]


def _numbers(res: dict) -> dict:
    return {"runs": [{k: r[k] for k in ("seed", "method", "region", "aues", "mu95", "trajectory")} for r in res["runs"]],
            "injection": res["injection"], "localization_check": res.get("localization_check"),
            "output_fit": res.get("output_fit")}


def _cli(runs_dir, fault=None):
    return run_cli(["study", "controlled", *MINI], runs_dir, fault)


def test_killed_study_resumes_to_identical_numbers(tmp_path, mini_cfg):
    from loc_unlearn.studies.common import run_study
    from loc_unlearn.studies.controlled import design

    cfg = mini_cfg(tmp_path / "clean")
    ref = json.loads((run_study(cfg, design(cfg)) / "results.json").read_text())
    runs = tmp_path / "faulty"
    killed = 0
    for fault in FAULTS:
        p = _cli(runs, fault)
        assert p.returncode in (-9, 0), p.stderr[-2000:]
        killed += p.returncode == -9
    assert killed >= 4, "the fault points were not reached: the test would prove nothing"
    p = _cli(runs)
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(next((runs / "study-controlled").glob("*/results.json")).read_text())
    assert _numbers(got) == _numbers(ref)


def _complete_run(tmp_path):
    from loc_unlearn.runs import cached

    return cached(tmp_path, "stage", {"a": 1}, lambda p: (p / "weights.safetensors").write_bytes(b"x" * 1000) and {})


def test_truncated_or_altered_artifacts_are_refused(tmp_path):
    from loc_unlearn.runs import cached

    run = _complete_run(tmp_path)
    f = run.path / "weights.safetensors"
    f.write_bytes(f.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated or altered"):
        cached(tmp_path, "stage", {"a": 1}, lambda p: {})


def test_disk_full_during_save_leaves_nothing_complete(tmp_path, monkeypatch):
    """ENOSPC in the middle of writing: no file under its final name, no manifest; a retry completes."""
    import safetensors.torch
    import torch

    from loc_unlearn import utils
    from loc_unlearn.runs import cached

    real = safetensors.torch.save_file

    def full_disk(tensors, path, metadata=None):
        Path(path).write_bytes(b"\0" * 10)  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    def build(p):
        utils.save_safetensors_atomic({"w": torch.ones(4)}, p / "w.safetensors")
        return {}

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(WriteError, match="no space left on device"):
        cached(tmp_path, "stage", {"k": 1}, build)
    d = next((tmp_path / "stage").iterdir())
    assert not (d / "w.safetensors").exists() and not (d / "manifest.json").exists()
    assert not [f for f in d.iterdir() if f.name.startswith(".tmp-")]  # temp file cleaned up
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    run = cached(tmp_path, "stage", {"k": 1}, build)
    assert run.is_complete() and (run.path / "w.safetensors").stat().st_size > 10


def test_model_folder_save_is_atomic(tmp_path, monkeypatch, tiny_model_dir):
    """A crash while saving a model keeps the previous folder intact (save_model renames a temp folder)."""
    from loc_unlearn.models import load

    model, tok = load.load_model(str(tiny_model_dir))
    out = tmp_path / "m"
    load.save_model(model, tok, out)
    before = {f.name: f.read_bytes() for f in out.iterdir()}

    def boom(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(model), "save_pretrained", boom)
    with pytest.raises(WriteError, match=f"cannot write {out}: no space left"):
        load.save_model(model, tok, out)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before


def test_trust_remote_code_is_off_by_default():
    from loc_unlearn.config import Config

    assert Config().model.trust_remote_code is False


def test_no_pickle_loading_in_the_package():
    """Nothing in the package loads pickles (torch.load without weights_only, pickle.load, joblib)."""
    src = Path(__file__).parents[2] / "src" / "loc_unlearn"
    for f in src.rglob("*.py"):
        text = f.read_text()
        assert "pickle.load" not in text and "joblib" not in text, f
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{f}: {line.strip()}"


def test_unknown_names_raise_user_errors():
    from loc_unlearn.masks.localize import LOCALIZERS
    from loc_unlearn.train.objectives import OBJECTIVES

    with pytest.raises(UserError, match="known"):
        OBJECTIVES.get("nope")
    with pytest.raises(UserError, match="known"):
        LOCALIZERS.get("nope")
