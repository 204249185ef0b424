"""Robustness attacks inside the controlled study (docs/attacks.md#attacks-in-the-studies): end to end on a small mini study, the MU95
checkpoint choice on synthetic trajectories, and a rerun that trains nothing."""
import json
import shutil

import pytest
import scipy.stats

from loc_unlearn.attacks.relearn import RECOVERY_EPS
from loc_unlearn.studies.robustness import checkpoint_steps, mu95_checkpoint

# The smallest design with a paired test: 2 seeds x 1 method x 2 regions, 2 checkpoints each, a short
# relearning schedule and one bit width (robustness=full takes the attack section as given).
SMALL = ["study.methods=npo", "study.localizers=random", "study.output_fit=false", "study.robustness=full",
         "attack.schedule=[0,2,4]", "attack.relearn_data=[forget_relearn]", "attack.bits=[4]"]


@pytest.fixture(scope="module")
def study(tmp_path_factory, mini_cfg):
    from loc_unlearn.studies.common import run_study
    from loc_unlearn.studies.controlled import design

    cfg = mini_cfg(tmp_path_factory.mktemp("runs"), *SMALL)
    d = run_study(cfg, design(cfg))
    return cfg, d, json.loads((d / "results.json").read_text())


def test_rows_cover_every_unlearned_model_at_both_checkpoints(study):
    _, _, res = study
    rob = res["robustness"]
    got = sorted((r["seed"], r["method"], r["region"], r["checkpoint"]) for r in rob["runs"])
    assert got == sorted((s, "npo", g, c) for s in range(2) for g in ("oracle", "random") for c in ("final", "mu95"))
    assert [m["metric"] for m in rob["metrics"]] == ["R_forget_relearn_k2", "R_forget_relearn_k4", "FS_4bit"]
    assert sorted((r["model"], r.get("seed")) for r in rob["references"]) == [("theta_o", 0), ("theta_o", 1),
                                                                              ("theta_r", None)]
    for r in rob["runs"]:
        run = next(u for u in res["runs"] if (u["seed"], u["region"]) == (r["seed"], r["region"]))
        steps = [p["step"] for p in run["trajectory"]]
        # the selected checkpoint is the one mu95_checkpoint picks from the saved trajectory
        want = checkpoint_steps(run["trajectory"], steps[1:])[r["checkpoint"]]["step"]
        assert r["step"] == want and r["step"] in steps[1:]
        for k in ("FS_before", "FS_4bit", "RS_before", "RS_4bit"):
            assert 0.0 <= r[k] <= 1.0


def test_recovery_recomputed_from_saved_es(study):
    _, _, res = study
    for r in res["robustness"]["runs"]:
        rel = r["relearn"]["forget_relearn"]
        pts = {p["k"]: p for p in rel["points"]}
        assert sorted(pts) == [0, 2, 4] and pts[0]["probe_es"] == rel["es_u"]
        gap = r["es_o"] - rel["es_u"]
        for k in (2, 4):
            if abs(gap) > RECOVERY_EPS:
                assert r[f"R_forget_relearn_k{k}"] == pytest.approx((pts[k]["probe_es"] - rel["es_u"]) / gap, abs=1e-12)
            else:  # undefined, never 0 (the tests skip it)
                assert r[f"R_forget_relearn_k{k}"] is None and rel["recovery_defined"] is False


def test_paired_tests_recomputed_with_scipy(study):
    _, _, res = study
    rob = res["robustness"]
    tests = {(t["checkpoint"], t["method"], t["metric"]): t for t in rob["tests"]}
    assert set(tests) == {(c, "npo", m["metric"]) for c in ("final", "mu95") for m in rob["metrics"]}
    checked = 0
    for (ck, method, metric), t in tests.items():
        by = {g: {r["seed"]: r[metric] for r in rob["runs"] if r["checkpoint"] == ck and r["region"] == g}
              for g in ("oracle", "random")}
        seeds = [s for s in sorted(by["oracle"]) if isinstance(by["oracle"][s], float) and isinstance(by["random"].get(s), float)]
        assert t["n"] == len(seeds)
        if len(seeds) < 2:
            continue
        a, b = [by["oracle"][s] for s in seeds], [by["random"][s] for s in seeds]
        d = [x - y for x, y in zip(a, b)]
        assert t["mean_diff"] == pytest.approx(sum(d) / len(d), abs=1e-12)
        if max(d) - min(d) > 1e-9:
            assert t["p_t"] == pytest.approx(scipy.stats.ttest_rel(a, b).pvalue, rel=1e-9)
            checked += 1
        elif all(x == 0 for x in d):
            assert t["p_t"] == 1.0  # documented special case of evaluate.stats.paired_tests
    assert all("mdd" in t and "ci_low" in t for t in tests.values() if t["n"] >= 2)


def test_report_and_summary_have_the_robustness_section(study, capsys):
    from loc_unlearn.commands.study import print_controlled_summary as print_summary

    _, d, _ = study
    md = (d / "report.md").read_text()
    assert "## Robustness (docs/attacks.md)" in md and "robustness_recovery.png" in md
    assert (d / "plots" / "robustness_recovery.png").is_file()
    print_summary(d)
    out = capsys.readouterr().out
    assert "Robustness (docs/attacks.md, final checkpoint; full)" in out and "FS 4-bit" in out


def test_rerun_reuses_the_attack_stages(study, monkeypatch):
    """With the study directory gone, a rerun rebuilds results.json from the cached stages: no training
    (unlearning or relearning) runs, and the robustness numbers are the same."""
    from loc_unlearn.studies.common import run_study
    from loc_unlearn.studies.controlled import design
    from loc_unlearn.train import loop

    cfg, d, res = study
    calls = []
    monkeypatch.setattr(loop, "train", lambda *a, **k: calls.append(1))
    shutil.rmtree(d)
    d2 = run_study(cfg, design(cfg))
    assert calls == []
    res2 = json.loads((d2 / "results.json").read_text())
    assert res2["robustness"]["runs"] == res["robustness"]["runs"]


def test_reduced_attacks_the_final_checkpoint_only(study, monkeypatch):
    """study.robustness=reduced (the tiny demo) attacks each unlearned model at its final checkpoint only: the
    same rows as full's final ones (cached attack runs, nothing trained), no MU95 rows or tests."""
    import dataclasses

    from loc_unlearn.studies import robustness
    from loc_unlearn.studies.common import run_study
    from loc_unlearn.studies.controlled import design
    from loc_unlearn.train import loop

    cfg, d, res = study
    # the fixture's attack settings as the reduced schedule, so every attack is the cached one
    monkeypatch.setattr(robustness, "REDUCED", {"schedule": [0, 2, 4], "relearn_data": ["forget_relearn"],
                                                "bits": [4], "nf4": False})
    calls = []
    monkeypatch.setattr(loop, "train", lambda *a, **k: calls.append(1))
    rcfg = dataclasses.replace(cfg, study=dataclasses.replace(cfg.study, robustness="reduced"))
    red = run_study(rcfg, design(rcfg))
    rob = json.loads((red / "results.json").read_text())["robustness"]
    assert calls == [] and rob["settings"]["checkpoints"] == ["final"]
    assert rob["runs"] == [r for r in res["robustness"]["runs"] if r["checkpoint"] == "final"]
    assert {t["checkpoint"] for t in rob["tests"]} == {"final"}
    assert "MU95 checkpoint" not in (red / "report.md").read_text()


# ----------------------------------------------------------------------------- the MU95 checkpoint


def _traj(mus, steps=None):
    steps = steps or list(range(0, 10 * len(mus), 10))
    return [{"step": s, "MU": m, "FS": 0.0, "RS": 0.0, "log10_FQ": 0.0} for s, m in zip(steps, mus)]


def test_mu95_checkpoint_is_the_first_saved_point_below_the_threshold():
    # MU0 = 1.0, threshold 0.95: 0.96 is above, 0.95 is not below (strict), 0.94 is the crossing
    assert mu95_checkpoint(_traj([1.0, 0.96, 0.95, 0.94, 0.5])) == {"index": 3, "step": 30, "reached": True}
    # a later recovery above the threshold does not move the choice
    assert mu95_checkpoint(_traj([1.0, 0.9, 0.99, 0.5]))["step"] == 10
    # irregular steps: the step of the point, not its index (MU0 = 0.8, threshold 0.76)
    assert mu95_checkpoint(_traj([0.8, 0.79, 0.7], steps=[0, 7, 13])) == {"index": 2, "step": 13, "reached": True}


def test_mu95_checkpoint_not_reached_is_the_final_one():
    assert mu95_checkpoint(_traj([1.0, 0.99, 0.97, 0.96])) == {"index": 3, "step": 30, "reached": False}
    steps = checkpoint_steps(_traj([1.0, 0.99, 0.9]), [10, 20])
    assert steps == {"final": {"step": 20}, "mu95": {"step": 20, "reached": True}}


def test_mu95_checkpoint_needs_a_checkpoint():
    from loc_unlearn.errors import UserError

    with pytest.raises(UserError, match="checkpoint_every"):
        mu95_checkpoint(_traj([1.0]))
    mixed = [{"step": 0, "MU": 1.0}] + [{"step": j, "MU": 0.1, "mix": j / 10} for j in range(1, 11)]
    assert checkpoint_steps(mixed, [4, 8]) == {"final": {"step": 8}, "mu95": {"step": 8, "reached": None}}


def test_robustness_tests_are_their_own_holm_family(study):
    """The robustness tests carry p_holm = holm() over the robustness tests alone (docs/statistics.md#multiple-comparisons);
    the headline's tests are a separate family of their own size."""
    import math

    from loc_unlearn.evaluate.stats import holm

    _, _, res = study
    for family in (res["robustness"]["tests"], res["tests"]):
        ps = [t.get("p_t") for t in family]
        m = sum(isinstance(p, float) and math.isfinite(p) for p in ps)
        for t, w in zip(family, holm(ps)):
            assert t["holm_m"] == m
            assert (math.isnan(t["p_holm"]) and math.isnan(w)) or t["p_holm"] == pytest.approx(w, abs=1e-15)
