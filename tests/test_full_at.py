"""eval.full_at=ends (issue 13): the full evaluation (FQ, MU sets, ROUGE) only at a trajectory's end points,
forget/retain ES at every point; AUES as with every point evaluated, MU95 from the points that have MU."""
import json

import pytest

from loc_unlearn import stages
from loc_unlearn.config import method_config
from loc_unlearn.errors import UserError
from loc_unlearn.evaluate.tradeoff import summarize_trajectory
from loc_unlearn.studies.robustness import mu95_checkpoint


def test_unlearn_full_at_ends_matches_all_points_on_fs_rs(tmp_path, mini_cfg):
    runs = tmp_path / "runs"
    # 2 epochs x 2 steps, a checkpoint per step: theta_0 + 4 points, 3 of them between the end points
    extra = ("unlearn.train.epochs=2", "eval.rouge=true")
    cfg_all = mini_cfg(runs, *extra)
    cfg_ends = mini_cfg(runs, *extra, "eval.full_at=ends")
    theta_r = stages.retain_model(cfg_all, stages.data_source(cfg_all))
    prep = stages.prepare_seed(cfg_all, stages.data_source(cfg_all), theta_r, 0)
    ucfg = method_config(cfg_all.unlearn, "npo")
    run_all = stages.unlearn(cfg_all, stages.data_source(cfg_all), prep["theta_o"], prep["masks"]["oracle"], theta_r, ucfg)
    run_ends = stages.unlearn(cfg_ends, stages.data_source(cfg_ends), prep["theta_o"], prep["masks"]["oracle"], theta_r, ucfg)
    assert run_all.path != run_ends.path  # a different evaluation is a different run
    a, e = run_all.metrics(), run_ends.metrics()
    ta, te = a["trajectory"], e["trajectory"]
    assert len(ta) == len(te) >= 4 and [p["step"] for p in ta] == [p["step"] for p in te]
    for pa, pe in zip(ta, te):  # same weights, same answer passes: identical ES
        assert (pa["FS"], pa["RS"]) == (pe["FS"], pe["RS"])
    for p in (te[0], te[-1]):  # the end points have everything
        assert p["MU"] is not None and p["log10_FQ"] is not None and not p.get("es_only")
    assert (te[0]["MU"], te[-1]["MU"]) == (ta[0]["MU"], ta[-1]["MU"])
    assert (te[0]["log10_FQ"], te[-1]["log10_FQ"]) == (ta[0]["log10_FQ"], ta[-1]["log10_FQ"])
    for p in te[1:-1]:  # the points between have ES alone
        assert p["es_only"] is True and p["MU"] is None and p["log10_FQ"] is None
    assert all(p["MU"] is not None for p in ta) and "mu95_note" not in a
    assert e["aues"] == a["aues"]
    ends_only = summarize_trajectory([ta[0], ta[-1]])
    assert e["mu95"] == ends_only["mu95"] and e["mu95_not_reached"] == ends_only["mu95_not_reached"]
    assert "2 of" in e["mu95_note"] and "eval.full_at=ends" in e["mu95_note"]
    # What was (not) computed at an intermediate checkpoint: no MU sets, no ROUGE, no truth ratios.
    mid = json.loads((run_ends.path / "train" / f"ckpt-{te[1]['step']}" / "metrics.json").read_text())
    assert "real_authors" not in mid and "world_facts" not in mid
    assert "truth_ratio_raw" not in mid["forget"] and "generations" not in mid["retain"]
    last = json.loads((run_ends.path / "train" / f"ckpt-{te[-1]['step']}" / "metrics.json").read_text())
    assert "real_authors" in last and last["retain"]["generations"]


def _pt(step, fs, rs, mu=None, fq=None):
    p = {"step": step, "FS": fs, "RS": rs, "MU": mu, "log10_FQ": fq}
    return p if mu is not None else p | {"es_only": True}


def test_summarize_uses_points_with_mu_for_mu95():
    pts = [_pt(0, 0.1, 0.9, 0.8, -5.0), _pt(1, 0.5, 0.8), _pt(2, 0.9, 0.4, 0.5, -1.0)]
    s = summarize_trajectory(pts)
    # MU falls from 0.8 to 0.5 between the two end points: t = (0.8 - 0.76) / 0.3
    assert s["mu95"] == pytest.approx(-5.0 + (0.04 / 0.3) * 4.0) and s["mu95_not_reached"] is False
    assert s["aues"] == summarize_trajectory([p | {"MU": 0.7, "log10_FQ": -2.0} for p in pts])["aues"]
    assert "steps 0, 2" in s["mu95_note"]


def test_summarize_refuses_es_only_theta0_and_silent_missing_mu():
    with pytest.raises(UserError, match="theta_0"):
        summarize_trajectory([_pt(0, 0.1, 0.9), _pt(1, 0.5, 0.8, 0.7, -2.0)])
    with pytest.raises(UserError, match="missing 'MU'"):  # MU None without es_only is an error, not a skip
        summarize_trajectory([_pt(0, 0.1, 0.9, 0.8, -5.0), {"step": 1, "FS": 0.5, "RS": 0.8, "MU": None}])


def test_mu95_checkpoint_skips_points_without_mu():
    pts = [_pt(0, 0.1, 0.9, 0.8, -5.0), _pt(1, 0.5, 0.8), _pt(2, 0.9, 0.4, 0.5, -1.0)]
    assert mu95_checkpoint(pts) == {"index": 2, "step": 2, "reached": True}
