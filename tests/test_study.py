"""A scaled-down controlled study end to end: report files and the consistency of its numbers."""
import json
from pathlib import Path

import pytest
import scipy.stats
import torch

from loc_unlearn.config import build_config
from loc_unlearn.evaluate.tradeoff import aues, mu95

# Small enough to run in well under a minute on one CPU thread; same code path as the demo.
MINI = [
    "data.n_authors=10", "data.qa_per_author=6", "data.n_real_authors=8", "data.n_world_facts=8",
    "model.tiny.n_layers=2", "model.tiny.hidden=32", "model.tiny.d_ff=64", "model.tiny.n_heads=2",
    "model.tiny.vocab_size=400", "model.tiny.pretrain_epochs=2",
    "finetune.train.epochs=2", "inject.train.epochs=2", "unlearn.train.epochs=1",
    "unlearn.train.checkpoint_every=0.5", "unlearn.train.batch_size=4",
    "study.seeds=2", "study.methods=npo,rmu", "study.localizers=random,activation",
    "eval.max_new_tokens=6", "eval.batch_size=32",
]


def mini_cfg(runs_dir, *extra):
    return build_config(overrides=[f"runs_dir={runs_dir}", *MINI, *extra])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from loc_unlearn.studies.controlled import run_study

    runs = tmp_path_factory.mktemp("runs")
    cfg = mini_cfg(runs)
    d = run_study(cfg)
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
        # The trajectory's points are the metrics saved next to each checkpoint.
        saved = json.loads(open(f"{r['run_dir']}/metrics.json").read())
        assert saved["trajectory"] == traj


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
    from loc_unlearn.train import loop

    cfg, d, res = study
    before = (d / "results.json").read_bytes()

    def boom(*a, **k):
        raise AssertionError("a complete study must not train again")

    monkeypatch.setattr(loop, "train", boom)
    assert controlled.run_study(cfg) == d
    assert (d / "results.json").read_bytes() == before


def test_curve_mix_ends_at_the_final_checkpoint(study):
    """SPEC §4 option curve=mix: 11 points theta(a), a = 0..1; a = 1 is the trained model, so its metrics
    equal the last checkpoint's in the default trajectory of the same run."""
    import dataclasses

    from loc_unlearn import stages
    from loc_unlearn.config import method_config
    from loc_unlearn.stages import prepare_seed

    cfg, _, res = study
    theta_r = stages.retain_model(cfg)
    prep = prepare_seed(cfg, theta_r, 0)
    ucfg = method_config(cfg.unlearn, "npo")
    mix_cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, curve="mix"))
    mix = stages.unlearn(mix_cfg, prep["theta_o"], prep["masks"]["oracle"], theta_r, ucfg).metrics()["trajectory"]
    ref = next(r for r in res["runs"] if r["seed"] == 0 and r["method"] == "npo" and r["region"] == "oracle")
    assert [p.get("mix") for p in mix] == [None] + [j / 10 for j in range(1, 11)]
    assert mix[0] == ref["trajectory"][0]
    for k in ("FS", "RS", "MU", "log10_FQ"):
        assert mix[-1][k] == pytest.approx(ref["trajectory"][-1][k], abs=1e-6)
