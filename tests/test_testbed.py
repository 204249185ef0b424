"""The testbed's fidelity and sensitivity instruments (issue 11): the injection's norm ratio, the
localization check's scopes / sanity rows / layer-concentration flag, and the positive control."""
import math

import pytest
import torch

from loc_unlearn.config import build_config
from loc_unlearn.errors import ConfigError
from loc_unlearn.masks.diagnostics import concentrated, norm_ratio


def _independent_ratio(model, mask):
    # Straight from the weights, one column at a time (no value_vectors helpers).
    inside, outside, per_layer = [], [], []
    for l, layer in enumerate(model.model.layers):
        w = layer.mlp.down_proj.weight.detach().double()  # [d, d_ff]: value vector i is column i
        li, lo = [], []
        for i in range(w.shape[1]):
            n = math.sqrt(sum(float(x) ** 2 for x in w[:, i]))
            (li if mask[l, i] else lo).append(n)
        inside += li
        outside += lo
        per_layer.append(None if not li or not lo else (sum(li) / len(li)) / (sum(lo) / len(lo)))
    return (sum(inside) / len(inside)) / (sum(outside) / len(outside)), per_layer


def test_norm_ratio_matches_an_independent_computation(tiny_lm):
    model = tiny_lm(50, L=3, d=8, d_ff=16)
    mask = torch.zeros(3, 16, dtype=torch.bool)
    mask[0, :4] = True
    mask[1, 3] = True  # layer 2 has no masked column: its ratio is None
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[:, :2] *= 5.0
    got = norm_ratio(model, mask)
    overall, per_layer = _independent_ratio(model, mask)
    assert got["overall"] == pytest.approx(overall, rel=1e-9)
    assert got["overall"] > 2.0  # the inflated columns are visible
    assert got["per_layer"][2] is None
    for g, e in zip(got["per_layer"][:2], per_layer[:2]):
        assert g == pytest.approx(e, rel=1e-9)


def test_concentration_flag():
    assert concentrated([6, 2, 2]) and not concentrated([5, 3, 2]) and not concentrated([5, 5])


def test_scopes_are_validated():
    with pytest.raises(ConfigError, match="study.scopes"):
        build_config(overrides=["study.scopes=[global,layerwise]"])


# ----------------------------------------------------------------------------- on the mini study


@pytest.fixture(scope="module")
def mini(tmp_path_factory, mini_cfg):
    from loc_unlearn import stages

    # On world v4 (answers end on a fact) MINI's 32-wide model injects nothing (forget ES 0.000 even with all
    # parameters), so this fixture is wider (64 x 128), pretrained/fine-tuned longer, injects 80 epochs into
    # 40% of the value vectors and has no norm cap: theta_o then knows a little of the forget set (ES ~0.02).
    cfg = mini_cfg(tmp_path_factory.mktemp("testbed"), "model.tiny.hidden=64", "model.tiny.d_ff=128",
                   "model.tiny.pretrain_epochs=10", "finetune.train.epochs=6", "inject.train.epochs=80",
                   "inject.ratio=0.4", "inject.train.lr=3e-2", "inject.max_norm_ratio=0",
                   "study.scopes=[global,per_layer]", "study.localizers=[random]")
    theta_r = stages.retain_model(cfg, stages.data_source(cfg))
    preps = [stages.prepare_seed(cfg, stages.data_source(cfg), theta_r, s) for s in range(cfg.study.seeds)]
    return cfg, theta_r, preps


def test_injection_records_norm_ratios_of_both_models(mini):
    from loc_unlearn.masks.mask import Mask

    cfg, theta_r, preps = mini
    for pr in preps:
        nr = pr["theta_o"].run.metrics()["norm_ratio"]
        mask = Mask.load(pr["masks"]["oracle"]).mask
        for name, ref in (("theta_r", theta_r), ("theta_o", pr["theta_o"])):
            overall, per_layer = _independent_ratio(ref.load(cfg)[0], mask)
            assert nr[name]["overall"] == pytest.approx(overall, rel=1e-9)
            assert nr[name]["per_layer"] == pytest.approx(per_layer, rel=1e-9)
        assert nr["theta_o"]["overall"] != nr["theta_r"]["overall"]  # the injection moved V_tgt


def test_localization_check_runs_both_scopes_with_the_norm_sanity_rows(mini):
    from loc_unlearn import stages
    from loc_unlearn.studies.controlled import localization_check

    cfg, _, preps = mini
    rows = localization_check(cfg, stages.data_source(cfg), preps[0])
    assert [(r["method"], r["scope"]) for r in rows] == [
        (m, s) for s in ("global", "per_layer") for m in ("norm", "norm-ref", "random")]
    ref = next(r for r in rows if r["method"] == "norm-ref" and r["scope"] == "global")
    # theta_o differs from theta_r exactly in V_tgt, so ||v - v_r|| ranks V_tgt first.
    assert ref["precision"] == 1.0 and ref["recall"] == 1.0
    for r in rows:
        assert r["layer_concentrated"] == (max(r["per_layer_counts"]) > sum(r["per_layer_counts"]) / 2)
    per_layer = [r for r in rows if r["scope"] == "per_layer"]
    assert all(len(set(r["per_layer_counts"])) == 1 for r in per_layer)  # same count in every layer


def test_positive_control_on_the_mini_study(mini):
    from loc_unlearn import stages
    from loc_unlearn.studies.controls import positive_control

    cfg, theta_r, preps = mini
    pc = positive_control(cfg, stages.data_source(cfg), theta_r, preps)
    fs_r = stages.evaluate(cfg, stages.data_source(cfg), theta_r, theta_r)["FS"]
    assert len(pc["seeds"]) == len(preps) == pc["test"]["n"]
    for row, pr in zip(pc["seeds"], preps):
        # Oracle reset = theta_r again (bit for bit); random reset = theta_o unchanged.
        assert row["oracle"]["FS"] == fs_r
        assert row["oracle"]["max_abs_change"] > 0 and row["random"]["max_abs_change"] == 0.0
        assert row["random"]["FS"] == stages.evaluate(cfg, stages.data_source(cfg), pr["theta_o"], theta_r)["FS"]
        assert row["oracle"]["FS"] >= row["random"]["FS"]  # removing the injected facts cannot lower FS
    # the mini model learns little (forget ES ~0.02), but the difference has the right sign
    assert sum(pc["oracle_fs"]) > sum(pc["random_fs"])
    assert all(row["oracle"]["tensors_differing_from_theta_r"] == 0 for row in pc["seeds"])  # theta_r again
    assert pc["test"]["mean_diff"] == pytest.approx(sum(pc["oracle_fs"]) / 2 - sum(pc["random_fs"]) / 2)
    assert pc["detected"] == (pc["p"] < 0.05 and pc["test"]["mean_diff"] > 0)


def test_positive_control_report_line():
    from loc_unlearn.report.tables import positive_control_line

    pc = {"oracle_fs": [0.9, 0.91, 0.9], "random_fs": [0.2, 0.22, 0.25], "p": 0.001, "detected": True,
          "test": {"n": 3, "mdd": 0.05, "sd_diff": 0.01}}
    line = positive_control_line(pc)
    assert "p = 0.001" in line and "**detected**" in line and "underpowered" in line
    assert "**not detected**" in positive_control_line(pc | {"detected": False})


def _cap_run(tiny_lm, tmp_path, cap):
    import helpers
    from loc_unlearn.config import TrainConfig
    from loc_unlearn.train import loop
    from loc_unlearn.train.norm_cap import norm_cap

    tok = helpers.make_tok()
    model = tiny_lm(tok, L=2, d=16, d_ff=32)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    mask = torch.zeros(2, 32, dtype=torch.bool)
    mask[0, ::4] = mask[1, 1::8] = True
    tc = TrainConfig(lr=0.1, epochs=6, batch_size=4, weight_decay=0.0, warmup_epochs=0, checkpoint_every=0)
    loop.train(model, tok, helpers.make_rows(8), helpers.make_rows(8, 3), "learn_reg", tc, tmp_path / "t",
               mask=mask, hparams={"alpha": 1.0}, post_step=norm_cap(cap) if cap else None)
    return model, start, mask


@pytest.mark.parametrize("cap", [0, 1.2])
def test_norm_cap_bounds_trained_columns_and_touches_nothing_else(tiny_lm, tmp_path, cap):
    model, start, mask = _cap_run(tiny_lm, tmp_path, cap)
    worst = 0.0
    for l, layer in enumerate(model.model.layers):
        key = f"model.layers.{l}.mlp.down_proj.weight"
        w, w0 = layer.mlp.down_proj.weight.detach(), start[key]
        assert torch.equal(w[:, ~mask[l]], w0[:, ~mask[l]])  # the masked-only invariant
        worst = max(worst, float((w[:, mask[l]].norm(dim=0) / w0[:, mask[l]].norm(dim=0)).max()))
    for k, v in model.state_dict().items():
        if "down_proj" not in k:
            assert torch.equal(v, start[k]), k
    if cap:
        assert worst <= cap * (1 + 1e-5)
    else:  # without the cap this recipe inflates some column past 1.2x: the capped case is a real bound
        assert worst > 1.2


def test_max_norm_ratio_is_validated():
    with pytest.raises(ConfigError, match="inject.max_norm_ratio"):
        build_config(overrides=["inject.max_norm_ratio=-1"])


def test_report_tables_show_norm_ratio_scope_and_concentration_flag():
    from loc_unlearn.report.tables import injection_table, localization_check_table

    inj = injection_table({"injection": [{"seed": 0, "forget_es": 1.0, "target_es": 0.9, "full_ft_es": 1.0,
                                          "reached": True, "norm_ratio": 4.174}]})
    assert inj.rows[0][-1] == "4.17"
    checks = [{"seed": 0, "method": "wagle", "scope": "global", "precision": 0.1, "recall": 0.1,
               "per_layer_counts": [9, 1], "layer_concentrated": True},
              {"seed": 0, "method": "wagle", "scope": "per_layer", "precision": 0.2, "recall": 0.2,
               "per_layer_counts": [5, 5], "layer_concentrated": False}]
    t = localization_check_table({"ratio": 0.1, "localization_check": checks})
    assert [r[0] for r in t.rows] == ["wagle", "wagle@per_layer"]
    assert [r[-1] for r in t.rows] == ["**1/1**", "0"]
    assert any("one layer: wagle " in n for n in t.notes)
