"""Issue 11: RMU's loss covers answer positions only; decoupled weight decay skips deltas without a gradient."""
import copy
import dataclasses

import pytest
import torch

from loc_unlearn.config import TrainConfig
from loc_unlearn.data.formatting import collate
from loc_unlearn.models.value_vectors import value_matrix
from loc_unlearn.train.loop import train
from loc_unlearn.train.masked import MaskedDelta
from loc_unlearn.train.objectives import OBJECTIVES, Context, layer_output, resolve_hparams, rmu_target

from helpers import direct_hidden, encoded_rows, make_rows, make_tok, rand_mask, tiny_lm


@pytest.fixture(scope="module")
def setup():
    tok = make_tok()
    fi, ri, _ = encoded_rows(tok, 6)
    return tok, fi, ri


def _moved(tok, L=4, seed=3):
    """(start model, model with nonzero masked deltas, MaskedDelta): the retain term is nonzero."""
    ref = tiny_lm(tok, L=L)
    model = copy.deepcopy(ref)
    md = MaskedDelta(model, torch.rand(L, 64, generator=torch.Generator().manual_seed(seed)) < 0.3)
    with torch.no_grad():
        for d in md.deltas:
            d.normal_(0, 0.3, generator=torch.Generator().manual_seed(d.shape[1]))
    return ref, model, md


def _rmu_loss(model, md, fi, ri, pad, hp, target):
    ctx = Context(hp=hp, reference=md.disabled, rmu_target=target)
    loss, _ = OBJECTIVES.get("rmu")(model, {"forget": collate(fi, pad), "retain": collate(ri, pad)}, ctx)
    return loss.detach()


def test_rmu_loss_equals_direct_mse_over_answer_positions(setup):
    """Per example: mean over its trained positions (answer tokens + eos, labels != -100) of the mean over
    d of (h^l - c u/|u|)^2, plus alpha times the same mean of (h^l - h^l_ref)^2 on the retain example."""
    tok, fi, ri = setup
    ref, model, md = _moved(tok)
    hp = resolve_hparams("rmu", {"alpha": 0.5}, 4)
    l = hp["rmu_layer"]
    target = rmu_target(32, hp["rmu_c"], seed=0)
    loss = _rmu_loss(model, md, fi, ri, tok.pad_token_id, hp, target)

    def trained(it):
        return torch.tensor(it["labels"]) != -100

    want = []
    with torch.no_grad():
        for f, r in zip(fi, ri):
            lf = ((direct_hidden(model, f, l) - target.double()) ** 2).mean(-1)[trained(f)].mean()
            lr = ((direct_hidden(model, r, l) - direct_hidden(ref, r, l)) ** 2).mean(-1)[trained(r)].mean()
            want.append(float(hp["gamma"] * lf + hp["alpha"] * lr))
    torch.testing.assert_close(loss.double(), torch.tensor(want, dtype=torch.float64), rtol=2e-4, atol=2e-5)


def test_rmu_loss_ignores_prompt_hidden_states(setup):
    """Changing h^l at prompt (and pad) positions cannot change the RMU loss: a hook on the steering layer
    adds fresh noise there on every forward (model and reference alike), answer positions untouched."""
    tok, fi, ri = setup
    _, model, md = _moved(tok)
    hp = resolve_hparams("rmu", {"alpha": 0.5}, 4)
    l = hp["rmu_layer"]
    target = rmu_target(32, hp["rmu_c"], seed=0)
    pad = tok.pad_token_id
    base = _rmu_loss(model, md, fi, ri, pad, hp, target)
    batches = [collate(fi, pad), collate(ri, pad)]
    state = {"n": 0}

    def see_input(_m, _args, kwargs):  # which batch is running: its labels mark the prompt positions
        ids = kwargs["input_ids"]
        state["prompt"] = next(b["labels"] == -100 for b in batches if torch.equal(b["input_ids"], ids))

    def scramble_prompt(_m, _args, out):
        h = out[0] if isinstance(out, tuple) else out
        state["n"] += 1
        noise = 10 * torch.randn(h.shape, generator=torch.Generator().manual_seed(state["n"]))
        h = torch.where(state["prompt"][..., None], h + noise, h)
        return (h, *out[1:]) if isinstance(out, tuple) else h

    hooks = [model.register_forward_pre_hook(see_input, with_kwargs=True),
             model.model.layers[l].register_forward_hook(scramble_prompt)]
    try:
        changed = _rmu_loss(model, md, fi, ri, pad, hp, target)
    finally:
        for h in hooks:
            h.remove()
    assert state["n"] == 3  # forget, retain, retain reference
    assert torch.equal(changed, base)


def _only_layer0_loss(model, ids):
    b = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return layer_output(model, b, 0).pow(2).mean()


def test_weight_decay_skips_deltas_without_gradient():
    """Like torch's AdamW: a delta whose grad is None (its layer is never reached) is not decayed."""
    model = tiny_lm(vocab=50, L=3, max_pos=64)
    md = MaskedDelta(model, rand_mask(3, 64))
    w0 = [value_matrix(model, l).detach().clone() for l in range(3)]
    opt = torch.optim.AdamW(md.parameters(), lr=1e-2, weight_decay=0.0)
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    for _ in range(20):
        _only_layer0_loss(model, ids).backward()
        assert md.deltas[0].grad is not None and md.deltas[1].grad is None and md.deltas[2].grad is None
        md.apply_weight_decay(1e-2, 0.1)
        opt.step()
        opt.zero_grad(set_to_none=True)
    md.merge()
    for l in (1, 2):
        assert torch.equal(value_matrix(model, l), w0[l]), l
    assert not torch.equal(value_matrix(model, 0), w0[0])


def test_rmu_run_leaves_layers_after_the_steering_layer_bit_identical(tmp_path):
    tok = make_tok()
    model = tiny_lm(tok, L=4)
    w0 = [value_matrix(model, l).detach().clone() for l in range(4)]
    mask = torch.rand(4, 64, generator=torch.Generator().manual_seed(7)) < 0.15
    cfg = TrainConfig(lr=1e-2, epochs=2, batch_size=4, weight_decay=0.1, warmup_epochs=0.5, checkpoint_every=1.0,
                      max_length=64, seed=3)
    train(model, tok, make_rows(8), make_rows(8, 5), "rmu", cfg, tmp_path, mask=mask, hparams={"rmu_layer": 1})
    for l in (2, 3):  # after the steering layer: no gradient, so no decay either
        assert torch.equal(value_matrix(model, l), w0[l]), l
    for l in (0, 1):
        assert not torch.equal(value_matrix(model, l)[:, mask[l]], w0[l][:, mask[l]]), l


def test_changed_loss_revision_refuses_old_checkpoints(tmp_path, monkeypatch):
    """RMU's loss changed (revision 1): a checkpoint of the old loss is not resumed with the new one."""
    from loc_unlearn.errors import CheckpointError
    from loc_unlearn.train import loop as loop_mod

    tok = make_tok()
    cfg = TrainConfig(lr=1e-2, epochs=1, batch_size=4, max_length=64, seed=3)
    mask = torch.rand(2, 64, generator=torch.Generator().manual_seed(7)) < 0.15
    rows, retain = make_rows(8), make_rows(8, 5)
    old = dataclasses.replace(OBJECTIVES["rmu"], revision=0)
    monkeypatch.setattr(loop_mod, "OBJECTIVES", {**OBJECTIVES, "rmu": old})
    train(tiny_lm(tok, L=2), tok, rows, retain, "rmu", cfg, tmp_path, mask=mask)
    monkeypatch.setattr(loop_mod, "OBJECTIVES", OBJECTIVES)
    assert OBJECTIVES["rmu"].revision == 1
    with pytest.raises(CheckpointError, match="different run"):
        train(tiny_lm(tok, L=2), tok, rows, retain, "rmu", cfg, tmp_path, mask=mask)
