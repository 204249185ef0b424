"""The training loop: masked invariants for every objective, reference cache, resume, batch-split and
divergence handling, checkpoints."""
import copy
import json
import random
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from loc_unlearn.config import TrainConfig
from loc_unlearn.data.formatting import encode_qa
from loc_unlearn.errors import CheckpointError, TrainingDiverged
from loc_unlearn.train import loop as loop_mod
from loc_unlearn.train.loop import load_checkpoint, train
from loc_unlearn.train.objectives import DEFAULTS, OBJECTIVES

from helpers import IDK, direct_token_logps, make_rows, make_tok, tiny_lm

CFG = TrainConfig(lr=1e-2, epochs=2, batch_size=4, weight_decay=0.1, warmup_epochs=0.5, checkpoint_every=1.0,
                  max_length=64, seed=3)


@pytest.fixture(scope="module")
def tok():
    return make_tok()


def setup(tok, L=2):
    model = tiny_lm(tok, L=L)
    mask = torch.rand(L, 64, generator=torch.Generator().manual_seed(7)) < 0.15
    return model, mask, make_rows(8), make_rows(8, 5)


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_every_objective_changes_only_masked_value_vectors(tok, tmp_path, name):
    model, mask, forget, retain = setup(tok)
    w0 = weights(model)
    res = train(model, tok, forget, retain, name, replace(CFG, epochs=1), tmp_path, mask=mask, idk=IDK)
    w1 = weights(model)
    for k in w0:
        if "down_proj" in k:
            l = int(k.split(".")[2])
            assert torch.equal(w1[k][:, ~mask[l]], w0[k][:, ~mask[l]]), k
            if name != "rmu" or l <= 0:  # rmu (layer 0 on 2 layers) sends no gradient past its layer
                assert not torch.equal(w1[k][:, mask[l]], w0[k][:, mask[l]]), k
        else:
            assert torch.equal(w1[k], w0[k]), k
    assert [r["step"] for r in res.log] == [1, 2] and all(torch.isfinite(torch.tensor(r["loss"])) for r in res.log)
    # the saved trajectory point rebuilds exactly the trained model
    rebuilt = load_checkpoint(tiny_lm(tok, L=2), res.final)
    for k, v in rebuilt.state_dict().items():
        assert torch.equal(v, w1[k]), k


def test_reference_cache_equals_separate_reference_model(tok, tmp_path):
    model, mask, forget, retain = setup(tok)
    ref = copy.deepcopy(model)
    cfg = replace(CFG, epochs=1)
    train(model, tok, forget, retain, "dpo", cfg, tmp_path, mask=mask, idk=IDK)
    cache = load_file(str(tmp_path / "ref_logps.safetensors"))
    rng = random.Random(cfg.seed)
    idk = [rng.choice(IDK) for _ in forget]
    with torch.no_grad():
        want_f = [direct_token_logps(ref, encode_qa(tok, r["question"], r["answer"], 64)).sum().item() for r in forget]
        want_i = [direct_token_logps(ref, encode_qa(tok, r["question"], a, 64)).sum().item() for r, a in zip(forget, idk)]
    torch.testing.assert_close(cache["forget"].double(), torch.tensor(want_f, dtype=torch.float64), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(cache["idk"].double(), torch.tensor(want_i, dtype=torch.float64), rtol=1e-5, atol=1e-4)
    assert len(set(idk)) > 1  # a random refusal per example, not one for all


@pytest.mark.parametrize("masked", [True, False])
def test_resume_is_bit_identical(tok, tmp_path, masked, monkeypatch):
    model, mask, forget, retain = setup(tok)
    m = mask if masked else None
    name = "npo" if masked else "graddiff"
    cfg = replace(CFG, epochs=3, checkpoint_every=0.5, lr=1e-2 if masked else 3e-3)  # 6 steps, ckpt every step
    full = copy.deepcopy(model)
    ref = train(full, tok, forget, retain, name, cfg, tmp_path / "a", mask=m)
    if masked:  # interruption by max_steps
        part = copy.deepcopy(model)
        train(part, tok, forget, retain, name, replace(cfg, max_steps=2), tmp_path / "b", mask=m)
    else:  # a crash in the middle of step 4 (after checkpoint 3)
        real = loop_mod.lr_at

        def boom(step, *a):
            if step == 3:
                raise KeyboardInterrupt
            return real(step, *a)
        monkeypatch.setattr(loop_mod, "lr_at", boom)
        with pytest.raises(KeyboardInterrupt):
            train(copy.deepcopy(model), tok, forget, retain, name, cfg, tmp_path / "b", mask=m)
        monkeypatch.setattr(loop_mod, "lr_at", real)
        assert sorted(p.name for p in (tmp_path / "b").glob("ckpt-*")) == ["ckpt-1", "ckpt-2", "ckpt-3"]
    res = train(copy.deepcopy(model) if masked else (resumed := copy.deepcopy(model)), tok, forget, retain, name, cfg,
                tmp_path / "b", mask=m)
    assert [r["loss"] for r in res.log] == [r["loss"] for r in ref.log]
    assert [p.name for p in res.checkpoints] == [p.name for p in ref.checkpoints]
    final_b = load_checkpoint(copy.deepcopy(model), res.final)
    for k, v in full.state_dict().items():
        assert torch.equal(final_b.state_dict()[k], v), k
    if not masked:
        for k, v in full.state_dict().items():
            assert torch.equal(resumed.state_dict()[k], v), k


def test_batch_split_invariance(tok, tmp_path):
    """1 x 8 (micro x accumulation) and 8 x 1 give the same trajectory."""
    model, mask, forget, retain = setup(tok)
    cfg = replace(CFG, batch_size=8, epochs=4, checkpoint_every=0)
    runs = []
    for micro in (8, 1):
        m = copy.deepcopy(model)
        res = train(m, tok, forget, retain, "wga", replace(cfg, micro_batch_size=micro), tmp_path / str(micro), mask=mask)
        runs.append((res, m))
    (r8, m8), (r1, m1) = runs
    torch.testing.assert_close(torch.tensor([r["loss"] for r in r1.log]), torch.tensor([r["loss"] for r in r8.log]),
                               rtol=1e-5, atol=1e-6)
    for k, v in m8.state_dict().items():
        torch.testing.assert_close(m1.state_dict()[k], v, rtol=1e-4, atol=1e-6)
    assert r8.log[0]["loss"] != r8.log[-1]["loss"]


def test_nan_loss_stops_and_keeps_last_checkpoint(tok, tmp_path, monkeypatch):
    model, mask, forget, retain = setup(tok)
    calls = {"n": 0}
    real = OBJECTIVES["ga"]

    def nan_at_step_3(model, batch, ctx):
        calls["n"] += 1
        loss, logs = real(model, batch, ctx)
        return (loss * float("nan") if calls["n"] >= 3 else loss), logs
    monkeypatch.setattr(loop_mod, "OBJECTIVES", {**OBJECTIVES, "ga": replace(real, fn=nan_at_step_3)})
    with pytest.raises(TrainingDiverged, match=r"step 3.*ckpt-2"):
        train(model, tok, forget, retain, "ga", replace(CFG, epochs=3), tmp_path, mask=mask)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-2"]
    load_checkpoint(tiny_lm(tok, L=2), tmp_path / "ckpt-2")


def test_checkpoint_damage_and_mismatch_are_detected(tok, tmp_path):
    model, mask, forget, retain = setup(tok)
    res = train(model, tok, forget, retain, "ga", replace(CFG, epochs=1), tmp_path, mask=mask)
    # a different run in the same folder is refused rather than silently resumed
    with pytest.raises(CheckpointError, match="different run"):
        train(tiny_lm(tok, L=2), tok, forget, retain, "graddiff", replace(CFG, epochs=1), tmp_path, mask=mask)
    with pytest.raises(CheckpointError, match="n_layers=2"):
        load_checkpoint(tiny_lm(tok, L=3), res.final)
    f = res.final / "delta.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="delta.safetensors.*corrupted"):
        load_checkpoint(tiny_lm(tok, L=2), res.final)


def test_bf16_autocast_masked_training_runs(tok, tmp_path):
    model, mask, forget, retain = setup(tok)
    w0 = weights(model)
    res = train(model, tok, forget, retain, "npo", replace(CFG, epochs=1, mixed_precision="bf16"), tmp_path, mask=mask)
    w1 = weights(model)
    k = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(w1[k][:, ~mask[1]], w0[k][:, ~mask[1]]) and not torch.equal(w1[k], w0[k])
    assert w1[k].dtype == torch.float32 and all(torch.isfinite(torch.tensor(r["loss"])) for r in res.log)


@pytest.mark.parametrize("masked", [True, False])
def test_rmu_reference_is_the_start_model(tok, tmp_path, masked):
    """At step 1 the model IS the reference, so RMU's retain term (h - h_ref)^2 is exactly 0; after an update
    it is not (the reference stays the start model: delta disabled, or the frozen copy when unmasked)."""
    model, mask, forget, retain = setup(tok)
    res = train(model, tok, forget, retain, "rmu", replace(CFG, epochs=1, lr=3e-2), tmp_path, mask=mask if masked else None)
    assert res.log[0]["retain_loss"] == 0.0
    assert res.log[1]["retain_loss"] > 0.0
