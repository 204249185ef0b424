"""Relearning attack (docs/attacks.md#relearning-attack): the probe/relearn split, recovery ratios, k = 0 as the identity, all
parameters trained, the segmented schedule equal to one run, and a positive check that relearning half of
each forgotten author's questions brings the other half back on a tiny model. Also the two commands."""
import copy
import json
import math
from dataclasses import replace

import pytest
import torch

from loc_unlearn.attacks.relearn import (_epochs_for, attack_rows, load_probe_split, probe_es, probe_relearn_split,
                                         recovery_defined, recovery_ratio, relearn_attack, save_probe_split)
from loc_unlearn.config import TrainConfig
from loc_unlearn.errors import DataError, UserError
from loc_unlearn.evaluate.token_metrics import token_metrics
from loc_unlearn.train.loop import train

from helpers import author_lm, author_rows, es_mean, memorize, word_tokenizer

# ----------------------------------------------------------------------------- shared tiny-model helpers
# author_rows, author_lm, memorize, es_mean (and add_outlier_channel, used by the quantize tests) live in helpers.py.


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- the split and R(k)


def test_split_is_disjoint_covers_per_author_halves_and_is_seeded():
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(30)]  # 5 authors x 6
    rel, probe = probe_relearn_split(rows, seed=0, qa_per_author=6)
    assert not set(rel) & set(probe) and sorted(rel + probe) == list(range(30))
    for a in range(5):
        mine = set(range(6 * a, 6 * a + 6))
        assert len(mine & set(rel)) == 3 and len(mine & set(probe)) == 3
    assert probe_relearn_split(rows, 0, 6) == (rel, probe)
    assert any(probe_relearn_split(rows, s, 6) != (rel, probe) for s in (1, 2, 3))
    # depends only on the number of rows (Oracle and Random share it, whatever the rows say)
    other = [{"question": "x", "answer": "y"}] * 30
    assert probe_relearn_split(other, 0, 6) == (rel, probe)
    # odd group sizes: the probe half gets the extra question
    rel5, probe5 = probe_relearn_split(rows, 0, 5)
    assert len(rel5) == 12 and len(probe5) == 18
    with pytest.raises(DataError, match="do not divide"):
        probe_relearn_split(rows, 0, 7)
    with pytest.raises(DataError, match=">= 2"):
        probe_relearn_split(rows, 0, 1)


def test_split_json_round_trip(tmp_path):
    rows = author_rows(3)
    rel, probe = probe_relearn_split(rows, 4, 4)
    save_probe_split(tmp_path / "split.json", rel, probe, seed=4, qa_per_author=4, forget_rows=rows)
    assert load_probe_split(tmp_path / "split.json", rows) == (rel, probe)
    with pytest.raises(DataError, match="digest"):
        load_probe_split(tmp_path / "split.json", author_rows(4)[4:])
    with pytest.raises(DataError, match="forget rows"):
        load_probe_split(tmp_path / "split.json", rows[:8])


def test_recovery_ratio_and_its_undefined_cases():
    assert recovery_ratio(0.5, 0.2, 0.8) == pytest.approx(0.5)
    assert recovery_ratio(0.2, 0.2, 0.8) == 0 and recovery_ratio(0.8, 0.2, 0.8) == 1
    assert recovery_ratio(0.1, 0.2, 0.8) < 0  # the attack can lower ES further
    for es_u, es_o in ((0.3, 0.3), (0.3, None), (None, 0.3), (0.3, float("nan"))):
        assert math.isnan(recovery_ratio(0.5, es_u, es_o)) and not recovery_defined(es_u, es_o)
    assert recovery_defined(0.2, 0.8)


def test_attack_rows_variants():
    forget, retain = author_rows(6)[16:], author_rows(6)[:16]
    rel, _ = probe_relearn_split(forget, 0, 4)
    assert attack_rows("forget_relearn", forget, retain, rel, 0) == [forget[i] for i in rel]
    ret = attack_rows("retain", forget, retain, rel, 0)
    assert len(ret) == len(rel) and all(r in retain for r in ret) and ret == attack_rows("retain", forget, retain, rel, 0)
    with pytest.raises(UserError):
        attack_rows("forget", forget, retain, rel, 0)


# ----------------------------------------------------------------------------- the attack


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """theta_o memorized 6 authors x 4 questions; theta_u = theta_o after graddiff on the last 2 authors
    (probe ES ~ 0 while the retain authors stay)."""
    rows = author_rows(6)
    tok = word_tokenizer(rows)
    forget, retain = rows[16:], rows[:16]
    d = tmp_path_factory.mktemp("relearn")
    theta_o = memorize(author_lm(tok), tok, rows, d / "o")
    rel, probe = probe_relearn_split(forget, 0, 4)
    es_o = probe_es(theta_o, tok, forget, probe)
    theta_u = copy.deepcopy(theta_o)
    cfg = TrainConfig(lr=3e-3, epochs=10, batch_size=8, warmup_epochs=0, checkpoint_every=0, weight_decay=0.0,
                      max_length=64)
    train(theta_u, tok, forget, retain, "graddiff", cfg, d / "u")
    return {"tok": tok, "forget": forget, "retain": retain, "rel": rel, "probe": probe, "theta_o": theta_o,
            "theta_u": theta_u, "es_o": es_o, "sets": {"forget": forget, "retain": retain}}


ATTACK = TrainConfig(lr=3e-3, batch_size=4, weight_decay=0.0, warmup_epochs=0.0, max_length=64, seed=1)


def test_world_forgot(world):
    assert world["es_o"] == 1.0
    assert probe_es(world["theta_u"], world["tok"], world["forget"], world["probe"]) <= 0.4


def test_zero_steps_is_the_identity(world, tmp_path):
    w, tok = world, world["tok"]
    model = copy.deepcopy(w["theta_u"])
    w0 = weights(model)
    res = relearn_attack(model, tok, [w["forget"][i] for i in w["rel"]], w["sets"], w["probe"], out_dir=tmp_path,
                         schedule=(0,), train_cfg=ATTACK, es_o=w["es_o"], restore=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, w0[k]), k
    (p,) = res["points"]
    es = token_metrics(model, tok, w["forget"])["es"]
    assert p["k"] == 0 and p["forget_es_rows"] == es and p["loss"] is None
    assert p["forget_es"] == sum(es) / len(es) and p["forget_fs"] == 1 - p["forget_es"]
    assert p["probe_es"] == probe_es(model, tok, w["forget"], w["probe"]) == res["es_u"]
    assert p["retain_es"] == es_mean(model, tok, w["retain"])
    assert p["recovery"] == 0.0


def test_restore_puts_the_given_weights_back(world, tmp_path):
    w = world
    model = copy.deepcopy(w["theta_u"])
    w0 = weights(model)
    res = relearn_attack(model, w["tok"], [w["forget"][i] for i in w["rel"]], w["sets"], w["probe"], out_dir=tmp_path,
                         schedule=(0, 3), train_cfg=ATTACK, es_o=w["es_o"])
    assert [p["k"] for p in res["points"]] == [0, 3] and res["points"][1]["loss"] is not None
    for k, v in model.state_dict().items():
        assert torch.equal(v, w0[k]), k
    assert not (tmp_path / "train").exists()  # checkpoints removed unless keep_checkpoints


def test_attack_trains_every_parameter(world, tmp_path):
    w = world
    model = copy.deepcopy(w["theta_u"])
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.model.embed_tokens.weight.requires_grad_(False)  # frozen before: the attacker trains it anyway
    relearn_attack(model, w["tok"], [w["forget"][i] for i in w["rel"]], w["sets"], w["probe"], out_dir=tmp_path,
                   schedule=(0, 3), train_cfg=ATTACK, es_o=w["es_o"], restore=False)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, w0[n])}
    assert changed == set(w0)  # embeddings, attention, norms, lm_head: not just W_down columns
    assert any("embed_tokens" in n for n in changed) and any("self_attn.q_proj" in n for n in changed)
    assert not model.model.embed_tokens.weight.requires_grad  # flags put back


def test_schedule_segments_equal_one_uninterrupted_run(world, tmp_path):
    w, tok = world, world["tok"]
    rows = [w["forget"][i] for i in w["rel"]]
    seg = copy.deepcopy(w["theta_u"])
    cfg = replace(ATTACK, warmup_epochs=1.0)  # a warmup so the LR schedule depends on the plan
    res = relearn_attack(seg, tok, rows, w["sets"], w["probe"], out_dir=tmp_path / "seg", schedule=(0, 2, 5),
                         train_cfg=cfg, es_o=w["es_o"], restore=False, keep_checkpoints=True)
    assert sorted(p.name for p in (tmp_path / "seg" / "train").glob("ckpt-*")) == ["ckpt-2", "ckpt-5"]
    one = copy.deepcopy(w["theta_u"])
    spe = math.ceil(len(rows) / cfg.batch_size)
    log = train(one, tok, rows, [], "learn", replace(cfg, epochs=_epochs_for(5, spe), checkpoint_every=0),
                tmp_path / "one").log
    assert len(log) == 5 and res["points"][-1]["loss"] == log[-1]["loss"] and res["points"][1]["loss"] == log[1]["loss"]
    for k, v in one.state_dict().items():
        assert torch.equal(seg.state_dict()[k], v), k


@pytest.fixture(scope="module")
def attacked(world, tmp_path_factory):
    w = world
    out = {}
    for data in ("forget_relearn", "retain"):
        d = tmp_path_factory.mktemp(data)
        rows = attack_rows(data, w["forget"], w["retain"], w["rel"], 0)
        out[data] = (relearn_attack(w["theta_u"], w["tok"], rows, w["sets"], w["probe"], out_dir=d,
                                    schedule=(0, 5, 10, 20), train_cfg=ATTACK, es_o=w["es_o"], data=data), d)
    return out


def test_relearning_the_relearn_half_brings_the_probe_half_back(attacked):
    res, _ = attacked["forget_relearn"]
    pts = res["points"]
    assert [p["k"] for p in pts] == [0, 5, 10, 20]
    assert pts[-1]["probe_es"] >= res["es_u"] + 0.4
    assert pts[-1]["recovery"] >= 0.4 and res["recovery_defined"]
    benign, _ = attacked["retain"]
    assert benign["n_train_rows"] == res["n_train_rows"]
    assert benign["points"][-1]["recovery"] < pts[-1]["recovery"]  # the benign variant recovers less


def test_saved_numbers_reproduce_the_recovery_ratios(attacked, world):
    for data, (res, d) in attacked.items():
        saved = json.loads((d / "relearn.json").read_text())
        assert saved == json.loads(json.dumps(res))
        assert saved["es_u"] == saved["points"][0]["probe_es"] and saved["es_o"] == world["es_o"]
        for p in saved["points"]:
            assert p["recovery"] == pytest.approx(recovery_ratio(p["probe_es"], saved["es_u"], saved["es_o"]), abs=1e-12)
            probe = [p["forget_es_rows"][i] for i in world["probe"]]
            assert p["probe_es"] == pytest.approx(sum(probe) / len(probe), abs=1e-12)


def test_undefined_recovery_is_null_and_flagged(world, tmp_path):
    w = world
    res = relearn_attack(w["theta_u"], w["tok"], [w["forget"][i] for i in w["rel"]], w["sets"], w["probe"],
                         out_dir=tmp_path, schedule=(0, 2), train_cfg=ATTACK, es_o=None)
    assert not res["recovery_defined"] and all(p["recovery"] is None for p in res["points"])
    assert "not given" in res["recovery_note"]
    with pytest.raises(UserError, match="schedule"):
        relearn_attack(w["theta_u"], w["tok"], [], w["sets"], w["probe"], out_dir=tmp_path, schedule=(-1, 2))


# ----------------------------------------------------------------------------- the commands


def _cfg(world_dir, model_dir, tmp_path, *extra):
    from loc_unlearn.config import build_config

    return build_config("tiny", overrides=[f"data.source={world_dir}", f"runs_dir={tmp_path / 'runs'}",
                                           f"model={model_dir}", "attack.qa_per_author=6", *extra],
                        aliases={"model": "input_model"})


def test_cmd_attack_relearn(world_dir, tiny_model_dir, tmp_path, capsys):
    from loc_unlearn.commands.attack import attack_relearn as cmd_attack_relearn
    from loc_unlearn.stages import qa_per_author

    cfg = _cfg(world_dir, tiny_model_dir, tmp_path, f"attack.theta_o={tiny_model_dir}", "attack.schedule=[0,2]",
               "attack.lr=1e-3", "attack.batch_size=2", f"out={tmp_path / 'out'}")
    assert qa_per_author(cfg) == 6
    cmd_attack_relearn(cfg)
    text = capsys.readouterr().out
    assert "data=forget_relearn" in text and "data=retain" in text
    res = json.loads((tmp_path / "out" / "relearn.json").read_text())
    assert set(res["variants"]) == {"forget_relearn", "retain"}
    assert res["split"] == {"seed": 0, "qa_per_author": 6, "n_relearn": 3, "n_probe": 3}
    for r in res["variants"].values():
        assert [p["k"] for p in r["points"]] == [0, 2]
        assert not r["recovery_defined"]  # theta_o = the attacked model: nothing was unlearned
    # cached: a second call reuses the run
    runs = list((tmp_path / "runs" / "attack_relearn").iterdir())
    cmd_attack_relearn(cfg)
    assert list((tmp_path / "runs" / "attack_relearn").iterdir()) == runs


def test_cmd_attack_quantize(world_dir, tiny_model_dir, tmp_path, capsys):
    from loc_unlearn.commands.attack import attack_quantize as cmd_attack_quantize

    cfg = _cfg(world_dir, tiny_model_dir, tmp_path, f"attack.theta_o={tiny_model_dir}",
               f"attack.theta_r={tiny_model_dir}", "attack.bits=[8,4]", "attack.group_size=16",
               f"out={tmp_path / 'out'}")
    cmd_attack_quantize(cfg)
    text = capsys.readouterr().out
    assert "theta_r" in text and "FS" in text
    res = json.loads((tmp_path / "out" / "quantize.json").read_text())
    assert set(res["models"]) == {"model", "theta_o", "theta_r"}
    for m in res["models"].values():
        assert set(m["results"]) == {"none", "8", "4"}
        assert all({"FS", "RS"} <= set(r) for r in m["results"].values())
