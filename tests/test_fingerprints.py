"""Run fingerprints depend only on what determines results (issue 13 item 4): the same mini pipeline in
two directories gives the same run directories and fingerprints, and a run rebuilt to the same bytes
(its manifest lost) keeps every downstream run valid."""
import json
from pathlib import Path

from loc_unlearn import stages
from loc_unlearn.config import method_config
from loc_unlearn.runs import Run


def _pipeline(cfg):
    """theta_r -> theta_o (random V_tgt) -> random complement mask -> NPO unlearning: every stage kind."""
    theta_r = stages.retain_model(cfg, stages.data_source(cfg))
    prep = stages.prepare_seed(cfg, stages.data_source(cfg), theta_r, 0)
    return stages.unlearn(cfg, stages.data_source(cfg), prep["theta_o"], prep["masks"]["random"], theta_r,
                          method_config(cfg.unlearn, "npo"))


def _runs(runs_dir: Path) -> dict[str, str]:
    """stage/hash -> fingerprint of every complete run."""
    out = {}
    for man in sorted(runs_dir.glob("*/*/manifest.json")):
        stage = man.parent.parent.name
        out[f"{stage}/{man.parent.name}"] = Run(man.parent, stage, {}).fingerprint
    return out


def test_same_inputs_same_runs_in_any_directory(tmp_path, mini_cfg):
    _pipeline(mini_cfg(tmp_path / "a"))
    _pipeline(mini_cfg(tmp_path / "elsewhere" / "b"))
    a, b = _runs(tmp_path / "a"), _runs(tmp_path / "elsewhere" / "b")
    assert {k.split("/")[0] for k in a} >= {"data", "base", "finetune", "inject_full", "localize", "inject",
                                           "evaluate", "unlearn"}
    assert a == b


def test_rebuilt_run_keeps_downstream_runs(tmp_path, mini_cfg, monkeypatch):
    cfg = mini_cfg(tmp_path)
    first = _pipeline(cfg)
    theta_r = stages.retain_model(cfg, stages.data_source(cfg))
    theta_r.run.manifest_path.unlink()  # lost: theta_r is rebuilt (same seed, same bytes)

    calls = []
    from loc_unlearn.train import loop

    real = loop.train

    def counting(*a, **kw):
        calls.append(a[4])
        return real(*a, **kw)

    monkeypatch.setattr(loop, "train", counting)
    again = _pipeline(cfg)
    assert calls == ["learn"], f"only theta_r is retrained, got {calls}"
    assert again.path == first.path
    assert json.loads((again.path / "metrics.json").read_text())["aues"] == first.metrics()["aues"]


def test_reused_study_verifies_its_inputs(tmp_path, monkeypatch):
    """A complete study stands on theta_r; truncating theta_r's weights afterwards makes the study's reuse
    fail with the file named, although the study itself is intact (issue 13)."""
    import pytest

    from loc_unlearn import runs
    from loc_unlearn.errors import CheckpointError

    def inner(p):
        (p / "model.safetensors").write_bytes(b"w" * 1000)
        return {}

    def study(p):
        runs.cached(tmp_path, "finetune", {"x": 1}, inner)
        (p / "results.json").write_text("{}")
        return {}

    s = runs.cached(tmp_path, "study-controlled", {"s": 1}, study)
    assert s.manifest()["inputs"] == [f"finetune/{runs.get_run(tmp_path, 'finetune', {'x': 1}).path.name}"]
    w = next(tmp_path.glob("finetune/*/model.safetensors"))
    w.write_bytes(b"w" * 10)
    monkeypatch.setattr(runs, "_VERIFIED", set())  # a new process
    with pytest.raises(CheckpointError, match=str(w)):
        runs.cached(tmp_path, "study-controlled", {"s": 1}, study)
