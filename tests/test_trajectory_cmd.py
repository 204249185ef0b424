"""`loc-unlearn trajectory` on HF-format checkpoint folders reproduces an unlearning run's own AUES and
MU95 exactly (issue 13 item 2): the checkpoints of a saved mini unlearn run, materialized as HF folders."""
import json

from loc_unlearn import stages
from loc_unlearn.cli import main
from loc_unlearn.config import method_config
from loc_unlearn.models.load import save_model
from loc_unlearn.train.loop import load_checkpoint

from helpers import MINI


def test_trajectory_of_saved_checkpoints_matches_the_run(tmp_path, mini_cfg, capsys):
    runs = tmp_path / "runs"
    cfg = mini_cfg(runs)
    theta_r = stages.retain_model(cfg, stages.data_source(cfg))
    prep = stages.prepare_seed(cfg, stages.data_source(cfg), theta_r, 0)
    theta_o = prep["theta_o"]
    run = stages.unlearn(cfg, stages.data_source(cfg), theta_o, prep["masks"]["oracle"], theta_r, method_config(cfg.unlearn, "npo"))
    met = run.metrics()
    folders = []
    for pt in met["trajectory"][1:]:
        model, tok = theta_o.load(cfg)
        load_checkpoint(model, run.path / "train" / f"ckpt-{pt['step']}")
        folders.append(str(save_model(model, tok, tmp_path / "hf" / f"ckpt-{pt['step']}")))
    assert len(folders) >= 2
    out = tmp_path / "out"
    rc = main(["trajectory", f"runs_dir={runs}", *MINI, f"init={theta_o.run.path}",
               f"checkpoints={','.join(folders)}", f"reference={theta_r.run.path}", f"out={out}"])
    assert rc == 0
    got = json.loads((out / "trajectory.json").read_text())
    assert got["aues"] == met["aues"] and got["mu95"] == met["mu95"]
    assert [p["step"] for p in got["trajectory"]] == [p["step"] for p in met["trajectory"]]
    assert "AUES" in (out / "trajectory.md").read_text() and "AUES" in capsys.readouterr().out
