"""The objective registry is the one place that says what a method needs (issue 10 item 1)."""
import pytest
import torch

from loc_unlearn.config import TrainConfig, UnlearnConfig, build_config
from loc_unlearn.plugins import check_methods
from loc_unlearn.train.loop import train
from loc_unlearn.train.objectives import (DEFAULTS, KNOWN_HPARAMS, OBJECTIVES, Objective, _combine, hparams_from,
                                          known_hparams, nll_avg, register, resolve_hparams)

from helpers import make_rows, make_tok, tiny_lm


def test_hparam_names_come_from_the_registry():
    assert KNOWN_HPARAMS == known_hparams() == {"gamma", "alpha", "beta", "delta", "rmu_c", "rmu_layer"}
    assert DEFAULTS == {n: dict(o.defaults) for n, o in OBJECTIVES.items()}
    # every hyperparameter can be set from the config section, by its own name
    for k in known_hparams():
        cfg = check_methods(build_config(overrides=[f"unlearn.{k}=2"]))
        assert hparams_from(cfg.unlearn) == {k: 2}
        assert type(hparams_from(cfg.unlearn)[k]) is (int if k == "rmu_layer" else float)  # the default's type


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_hparams_from_config_resolves_like_the_old_hand_built_dict(name):
    for p in ({}, {"gamma": 2.0, "beta": 0.3, "rmu_layer": 2, "rmu_c": 3.0}, {"alpha": 0.0, "delta": 0.5}):
        # the old UnlearnConfig fields: gamma/alpha/beta/delta None = unset, rmu_layer -1 and rmu_c 6.5 always set
        old = {k: v for k, v in p.items() if k in ("gamma", "alpha", "beta", "delta")}
        old |= {"rmu_layer": p.get("rmu_layer", -1), "rmu_c": p.get("rmu_c", 6.5)}
        assert resolve_hparams(name, hparams_from(UnlearnConfig(params=p)), 4) == resolve_hparams(name, old, 4)


def test_same_body_is_one_function_under_two_names():
    assert OBJECTIVES["ga"].fn is OBJECTIVES["graddiff"].fn
    assert OBJECTIVES["learn"].fn is OBJECTIVES["learn_reg"].fn
    assert OBJECTIVES["ga"].defaults["alpha"] == 0 and OBJECTIVES["graddiff"].defaults["alpha"] == 1
    with pytest.raises(TypeError):
        OBJECTIVES["ga"].defaults["alpha"] = 5  # entries are frozen


def test_declared_needs():
    assert OBJECTIVES["npo"].ref_logp == ("forget",) and OBJECTIVES["dpo"].ref_logp == ("forget", "idk")
    assert OBJECTIVES["dpo"].needs_idk and OBJECTIVES["rmu"].needs_reference and OBJECTIVES["rmu"].always_retain
    assert [n for n, o in OBJECTIVES.items() if o.needs_retain(dict(o.defaults))] == \
        ["graddiff", "wga", "npo", "simnpo", "dpo", "rmu", "learn_reg"]
    with pytest.raises(ValueError, match="idk"):
        Objective(lambda *a: None, {}, ref_logp=("idk",))


def test_a_new_objective_is_one_function_and_one_entry(tmp_path):
    def half_ascent(model, batch, ctx):
        return _combine(model, batch, ctx, -ctx.hp["scale"] * nll_avg(model, batch["forget"]), {})

    register("toy", half_ascent, {"gamma": 1.0, "alpha": 1.0, "scale": 0.5}, ref_logp=("forget",))
    try:
        tok = make_tok()
        model = tiny_lm(tok, L=2)
        mask = torch.rand(2, 64, generator=torch.Generator().manual_seed(7)) < 0.15
        cfg = TrainConfig(lr=1e-2, epochs=1, batch_size=4, max_length=64, seed=3)
        res = train(model, tok, make_rows(8), make_rows(8, 5), "toy", cfg, tmp_path, mask=mask,
                    hparams={"scale": 2.0})
        assert [r["step"] for r in res.log] == [1, 2] and "retain_loss" in res.log[0]
        assert (tmp_path / "ref_logps.safetensors").is_file()
        assert resolve_hparams("toy", {"scale": 2}, 2)["scale"] == 2.0
    finally:
        del OBJECTIVES["toy"]
