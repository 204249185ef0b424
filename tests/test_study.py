"""A scaled-down controlled study end to end: report files and the consistency of its numbers."""
import inspect
import json
import shutil
from pathlib import Path

import pytest
import scipy.stats
import torch

from loc_unlearn.evaluate.tradeoff import aues, mu95


@pytest.fixture(scope="module")
def study(tmp_path_factory, mini_cfg):
    from loc_unlearn.studies.common import run_study
    from loc_unlearn.studies.controlled import design

    runs = tmp_path_factory.mktemp("runs")
    cfg = mini_cfg(runs)
    d = run_study(cfg, design(cfg))
    return cfg, d, json.loads((d / "results.json").read_text())


def test_report_files(study):
    _, d, res = study
    html = (d / "report.html").read_text()
    assert (d / "report.md").is_file() and "<img" in html and "http://" not in html
    assert "AUES" in (d / "report.md").read_text()


def test_runs_cover_the_design(study):
    cfg, _, res = study
    got = sorted((r["seed"], r["method"], r["region"]) for r in res["runs"])
    want = sorted((s, m, r) for s in range(2) for m in ("npo", "rmu") for r in ("oracle", "random"))
    assert got == want
    assert {(t["method"], t["metric"]) for t in res["tests"]} == {(m, k) for m in ("npo", "rmu") for k in ("aues", "mu95")}


def test_summaries_recomputed_from_saved_trajectories(study):
    _, _, res = study
    for r in res["runs"]:
        traj = r["trajectory"]
        assert traj[0]["step"] == 0 and len(traj) >= 3  # theta_0 + checkpoints every 1/2 epoch
        assert r["aues"] == pytest.approx(aues([p["FS"] for p in traj], [p["RS"] for p in traj]), abs=1e-12)
        m, nr = mu95([p["MU"] for p in traj], [p["log10_FQ"] for p in traj])
        assert r["mu95"] == pytest.approx(m, abs=1e-12) and r["mu95_not_reached"] == nr


POINT_KEYS = ("FS", "RS", "MU", "log10_FQ")


def _checkpoints(run_dir) -> list[Path]:
    """The unlearn run's checkpoint folders, in step order."""
    return sorted(Path(run_dir, "train").glob("ckpt-*"), key=lambda p: int(p.name.split("-")[1]))


def test_trajectory_points_are_each_checkpoints_own_metrics(study):
    """Point 0 is theta_0's own evaluation; point k is checkpoint k's: its step (the trainer's state saved
    in the checkpoint) and its metrics (the ckpt-*/metrics.json the unlearn stage wrote). Those files are
    checked against an independent evaluation of the checkpoint (load_checkpoint + evaluate_model) for
    one run per method, and the checkpoints' metrics differ from each other, so a point or a file taken
    from the wrong checkpoint or at the wrong step fails here."""
    from loc_unlearn import stages
    from loc_unlearn.evaluate.tofu import evaluate_model
    from loc_unlearn.train.loop import load_checkpoint

    cfg, _, res = study
    theta_r = stages.retain_model(cfg, stages.data_source(cfg))
    sets, ref_tr = stages.data_source(cfg).eval_sets(), stages.reference_truth_ratios(cfg, stages.data_source(cfg), theta_r)
    tcfg = cfg.unlearn.train
    reevaluate = {(0, "npo", "oracle"), (1, "rmu", "random")}
    for r in res["runs"]:
        theta_o = stages.inject(cfg, stages.data_source(cfg), theta_r, r["seed"])  # cached: theta_0 of this run
        traj, ckpts = r["trajectory"], _checkpoints(r["run_dir"])
        m0 = stages.evaluate(cfg, stages.data_source(cfg), theta_o, theta_r)
        assert traj[0] == {"step": 0, **{k: m0[k] for k in POINT_KEYS}}
        assert len(traj) == len(ckpts) + 1 and len(ckpts) == round(tcfg.epochs / tcfg.checkpoint_every)
        states = [json.loads((ck / "trainer_state.json").read_text()) for ck in ckpts]
        every = tcfg.checkpoint_every
        assert [st["epoch"] for st in states] == pytest.approx([every * (k + 1) for k in range(len(ckpts))])
        assert states[-1]["step"] == states[-1]["total_steps"]
        for point, ck, st in zip(traj[1:], ckpts, states):
            own = json.loads((ck / "metrics.json").read_text())
            assert point == {"step": st["step"], **{k: own[k] for k in POINT_KEYS}}, (r["run_dir"], ck.name)
        if (r["seed"], r["method"], r["region"]) in reevaluate:
            fresh = []
            for ck in ckpts:
                base, tok = theta_o.load(cfg)
                met = evaluate_model(load_checkpoint(base, ck), tok, sets, cfg.eval, reference_truth_ratios=ref_tr)
                fresh.append(json.loads(json.dumps(met)))
                assert fresh[-1] == json.loads((ck / "metrics.json").read_text()), ck
            # distinct models, distinct metrics: the comparisons above can tell checkpoints apart
            m0_eval = {k: v for k, v in m0.items() if k != "elapsed_s"}  # the stage's run adds its duration
            all_m = [json.dumps(m, sort_keys=True) for m in [m0_eval, *fresh]]
            assert len(set(all_m)) == len(all_m)


def test_paired_tests_match_scipy(study):
    _, _, res = study
    for t in res["tests"]:
        by = {reg: {r["seed"]: r[t["metric"]] for r in res["runs"] if r["method"] == t["method"] and r["region"] == reg}
              for reg in ("oracle", "random")}
        a = [by["oracle"][s] for s in (0, 1)]
        b = [by["random"][s] for s in (0, 1)]
        assert t["mean_diff"] == pytest.approx(sum(a) / 2 - sum(b) / 2, abs=1e-12)
        if len({x - y for x, y in zip(a, b)}) > 1:
            assert t["p_t"] == pytest.approx(scipy.stats.ttest_rel(a, b).pvalue, rel=1e-9)


def test_theta_o_differs_from_theta_r_only_in_v_tgt(study):
    from loc_unlearn.masks.mask import Mask
    from loc_unlearn.models.load import load_model
    from loc_unlearn.models.value_vectors import value_matrix

    cfg, _, res = study
    masks = {m["name"]: m for m in res["masks"] if m["seed"] == 0}
    assert sum(masks["oracle"]["per_layer_counts"]) == sum(masks["random"]["per_layer_counts"])
    runs = Path(cfg.runs_dir)
    ft = next(p for p in (runs / "finetune").iterdir() if json.loads((p / "metrics.json").read_text())["split"] == "retain90")
    m_r, _ = load_model(str(ft / "model"))
    inj_dirs = sorted((runs / "inject").iterdir())
    assert len(inj_dirs) == 2
    for inj in inj_dirs:
        tgt = Mask.load(inj / "mask.safetensors").mask
        m_o, _ = load_model(str(inj / "model"))
        for layer in range(tgt.shape[0]):
            changed = (value_matrix(m_o, layer) != value_matrix(m_r, layer)).any(dim=0)
            assert not changed[~tgt[layer]].any()
        assert any((value_matrix(m_o, l) != value_matrix(m_r, l)).any() for l in range(tgt.shape[0]))
        for (n, p), (_, q) in zip(m_o.named_parameters(), m_r.named_parameters()):
            if "down_proj" not in n:
                assert torch.equal(p, q), n


def test_rerun_reuses_everything(study, monkeypatch):
    from loc_unlearn.studies import controlled
    from loc_unlearn.studies.common import run_study
    from loc_unlearn.train import loop

    cfg, d, res = study
    before = (d / "results.json").read_bytes()

    def boom(*a, **k):
        raise AssertionError("a complete study must not train again")

    monkeypatch.setattr(loop, "train", boom)
    assert run_study(cfg, controlled.design(cfg)) == d
    assert (d / "results.json").read_bytes() == before


def test_rerun_without_study_outputs_reuses_inner_runs_and_recomputes_an_incomplete_one(study, monkeypatch):
    """With the study-level run deleted, a rerun goes through every inner stage again: each complete
    inner run (theta_r, theta_o, masks, evaluations, unlearning runs, output fit) is reused untouched,
    and only the unlearning run whose manifest was deleted is built again (its training resumes from
    its checkpoints). The rebuilt study has the same numbers. Runs in place: run keys hold absolute
    paths (the random-complement mask's source), so a copied runs_dir would not be reused."""
    from loc_unlearn.studies import controlled
    from loc_unlearn.studies.common import run_study
    from loc_unlearn.train import loop

    cfg, d, res = study
    runs = Path(cfg.runs_dir)
    victim = Path(next(r["run_dir"] for r in res["runs"] if (r["seed"], r["method"], r["region"]) == (1, "rmu", "random")))
    shutil.rmtree(d)
    (victim / "manifest.json").unlink()
    manifests = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in runs.glob("*/*/manifest.json")}
    assert sum(p.parent.parent.name == "unlearn" for p in manifests) >= len(res["runs"]) - 1

    real_train, trained = loop.train, []

    def counting_train(*a, **k):
        trained.append(Path(inspect.signature(real_train).bind(*a, **k).arguments["out_dir"]))
        return real_train(*a, **k)

    monkeypatch.setattr(loop, "train", counting_train)
    assert run_study(cfg, controlled.design(cfg)) == d
    assert trained == [victim / "train"]
    for p, (mtime, data) in manifests.items():
        assert p.stat().st_mtime_ns == mtime and p.read_bytes() == data, f"{p.parent} was rebuilt"
    assert (victim / "manifest.json").is_file() and (d / "manifest.json").is_file()
    again = json.loads((d / "results.json").read_text())
    strip = lambda x: {k: v for k, v in x.items() if k not in ("created", "elapsed_s")}  # noqa: E731
    assert strip(again) == strip(res)


def test_curve_mix_ends_at_the_final_checkpoint(study):
    """Option curve=mix (docs/metrics.md#mix-curve): 11 points theta(a), a = 0..1; a = 1 is the trained model, so its metrics
    equal the last checkpoint's in the default trajectory of the same run."""
    import dataclasses

    from loc_unlearn import stages
    from loc_unlearn.config import method_config
    from loc_unlearn.stages import prepare_seed

    cfg, _, res = study
    theta_r = stages.retain_model(cfg, stages.data_source(cfg))
    prep = prepare_seed(cfg, stages.data_source(cfg), theta_r, 0)
    ucfg = method_config(cfg.unlearn, "npo")
    mix_cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, curve="mix"))
    mix = stages.unlearn(mix_cfg, stages.data_source(mix_cfg), prep["theta_o"], prep["masks"]["oracle"], theta_r, ucfg).metrics()["trajectory"]
    ref = next(r for r in res["runs"] if r["seed"] == 0 and r["method"] == "npo" and r["region"] == "oracle")
    assert [p.get("mix") for p in mix] == [None] + [j / 10 for j in range(1, 11)]
    assert mix[0] == ref["trajectory"][0]
    for k in ("FS", "RS", "MU", "log10_FQ"):
        assert mix[-1][k] == pytest.approx(ref["trajectory"][-1][k], abs=1e-6)


def test_tests_carry_holm_over_the_family_and_the_fq_ceiling(study):
    """Every Oracle-vs-Random test carries p_holm = holm() over all of the study's tests (the headline's family,
    docs/statistics.md#multiple-comparisons) and the family size; fq_ceiling is the exact KS floor at the number of
    truth ratios FQ actually compared (theta_r's, the FQ reference), checked against scipy on separated samples."""
    import math

    import numpy as np

    from loc_unlearn import stages
    from loc_unlearn.evaluate.stats import holm

    cfg, _, res = study
    ps = [t.get("p_t") for t in res["tests"]]
    finite = [p for p in ps if isinstance(p, float) and math.isfinite(p)]
    assert finite  # 2 seeds that differ: there is something to correct
    want = holm(ps)
    for t, w in zip(res["tests"], want):
        assert t["holm_m"] == len(finite)
        assert (math.isnan(t["p_holm"]) and math.isnan(w)) or t["p_holm"] == pytest.approx(w, abs=1e-15)
    smallest = min(range(len(ps)), key=lambda i: ps[i] if ps[i] == ps[i] else 2.0)
    assert res["tests"][smallest]["p_holm"] == pytest.approx(min(1.0, len(finite) * ps[smallest]))  # by hand

    data = stages.data_source(cfg)
    n = len(stages.reference_truth_ratios(cfg, data, stages.retain_model(cfg, data)))
    assert res["fq_ceiling"]["n_forget"] == n == len(data.eval_sets()["forget"])
    sep = scipy.stats.ks_2samp(np.arange(n, dtype=float), np.arange(n, dtype=float) + n)
    assert res["fq_ceiling"]["log10_fq_min"] == pytest.approx(math.log10(sep.pvalue), abs=1e-9)


def test_practical_fq_ceiling_and_theta_r_entry(study):
    """fq_ceiling.practical is the KS test between theta_r's own forget and retain truth ratios, checked
    against a KS statistic computed by hand (largest gap between the two empirical CDFs); rows_for_minus_8
    is the smallest n at which the asymptotic tail 2 exp(-D^2 n) reaches 1e-8. results.json theta_r holds
    theta_r's own ES and MU."""
    import math

    import numpy as np

    from loc_unlearn import stages

    cfg, _, res = study
    data = stages.data_source(cfg)
    m = stages.evaluate(cfg, data, stages.retain_model(cfg, data))
    a, b = np.sort(m["forget"]["truth_ratio_raw"]), np.sort(m["retain"]["truth_ratio_raw"])
    grid = np.concatenate([a, b])
    d = max(abs(np.searchsorted(a, x, side="right") / len(a) - np.searchsorted(b, x, side="right") / len(b))
            for x in grid)
    p = res["fq_ceiling"]["practical"]
    assert p["ks_d"] == pytest.approx(d, abs=1e-12) and (p["n_unseen"], p["n_seen"]) == (len(a), len(b))
    assert p["log10_fq"] <= 0
    n = p["rows_for_minus_8"]
    assert 2 * math.exp(-d * d * n) <= 1e-8 < 2 * math.exp(-d * d * (n - 1))
    assert res["theta_r"] == {"forget_es": m["forget"]["es"], "retain_es": m["retain"]["es"], "MU": m["MU"],
                              "MU_sets": m["MU_sets"]}
