"""Objectives (docs/objectives.md) against direct per-example computations written from the formulas of docs/objectives.md: each
example alone (no padding), log_softmax over the vocabulary, hidden states from output_hidden_states."""
import copy
import math

import pytest
import torch

from loc_unlearn.data.formatting import collate
from loc_unlearn.errors import ConfigError, UserError
from loc_unlearn.train.masked import MaskedDelta
from loc_unlearn.train.objectives import (DEFAULTS, OBJECTIVES, Context, resolve_hparams, rmu_target,
                                          sequence_logps)

from helpers import IDK, direct_hidden, direct_token_logps, encoded_rows, make_tok, tiny_lm


# ----------------------------------------------------------------------------- direct computations


def direct_loss(name, hp, model, ref, f, r, i, target):
    lp_f = direct_token_logps(model, f)
    nll_f = -lp_f.mean()
    nll_r = -direct_token_logps(model, r).mean()
    b = hp.get("beta")
    sig = lambda z: 1 / (1 + math.exp(-z))
    if name in ("ga", "graddiff"):
        lf = -nll_f
    elif name in ("learn", "learn_reg"):
        lf = nll_f
    elif name == "wga":
        lf = (lp_f.exp() ** b * lp_f).mean()
    elif name == "npo":
        z = (lp_f.sum() - direct_token_logps(ref, f).sum()).item()
        lf = -(2 / b) * math.log(sig(-b * z))
    elif name == "simnpo":
        lf = -(2 / b) * math.log(sig(b * (nll_f.item() - hp["delta"])))
    elif name == "dpo":
        idk = i
        z = ((direct_token_logps(model, idk).sum() - direct_token_logps(ref, idk).sum())
             - (lp_f.sum() - direct_token_logps(ref, f).sum())).item()
        lf = -(2 / b) * math.log(sig(b * z))
    elif name == "rmu":
        l = hp["rmu_layer"]  # answer positions only (answer tokens + eos: labels != -100), docs/data.md#prompt-and-answer-formatting
        tf, tr = torch.tensor(f["labels"]) != -100, torch.tensor(r["labels"]) != -100
        lf = ((direct_hidden(model, f, l) - target.double()) ** 2)[tf].mean()
        nll_r = ((direct_hidden(model, r, l) - direct_hidden(ref, r, l)) ** 2)[tr].mean()
    return float(hp["gamma"] * lf + hp["alpha"] * nll_r)


@pytest.fixture(scope="module")
def setup():
    tok = make_tok()
    return (tok, *encoded_rows(tok, 6, IDK[:4]))


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_objective_equals_direct_spec_formula(setup, name):
    tok, fi, ri, ii = setup
    ref = tiny_lm(tok, L=4)
    model = copy.deepcopy(ref)
    mask = torch.rand(4, 64, generator=torch.Generator().manual_seed(3)) < 0.3
    md = MaskedDelta(model, mask)
    with torch.no_grad():  # move away from the reference so ratios/margins/RMU retain terms are nonzero
        for d in md.deltas:
            d.normal_(0, 0.3, generator=torch.Generator().manual_seed(d.shape[1]))
    hp = resolve_hparams(name, {"beta": 0.7} if name in ("wga", "npo", "dpo") else {"delta": 0.3} if name == "simnpo"
                         else {"alpha": 0.5} if name in ("ga", "rmu") else {}, 4)
    pad = tok.pad_token_id
    batch = {"forget": collate(fi, pad), "retain": collate(ri, pad), "idk": collate(ii, pad)}
    target = rmu_target(32, hp.get("rmu_c", 6.5), seed=0)
    ref_logp = {"forget": sequence_logps(ref, [collate(fi, pad)]), "idk": sequence_logps(ref, [collate(ii, pad)])}
    ctx = Context(hp=hp, ref_logp=ref_logp, reference=md.disabled, rmu_target=target)
    loss, logs = OBJECTIVES.get(name)(model, batch, ctx)
    assert loss.shape == (6,)
    with torch.no_grad():
        want = [direct_loss(name, hp, model, ref, fi[k], ri[k], ii[k], target) for k in range(6)]
    torch.testing.assert_close(loss.detach().double(), torch.tensor(want, dtype=torch.float64), rtol=2e-4, atol=2e-5)
    assert loss.requires_grad and all(v.shape == (6,) for v in logs.values())


def test_rmu_default_layer_and_npo_starts_at_log2(setup):
    tok, fi, ri, _ = setup
    assert resolve_hparams("rmu", {"rmu_layer": -1}, 32)["rmu_layer"] == 7
    assert resolve_hparams("rmu", {}, 4)["rmu_layer"] == 1  # round(7/32*4) = round(0.875)
    assert resolve_hparams("rmu", {}, 2)["rmu_layer"] == 0
    with pytest.raises(ConfigError, match="rmu_layer"):
        resolve_hparams("rmu", {"rmu_layer": 9}, 4)
    with pytest.raises(ConfigError, match="known"):
        resolve_hparams("npo", {"lr": 1}, 4)
    with pytest.raises(UserError, match="unlearning method.*npo"):
        resolve_hparams("nope", {}, 4)
    # at theta = ref the NPO forget term is -(2/beta) log sigmoid(0) = (2/beta) log 2
    model = tiny_lm(tok, L=4)
    pad = tok.pad_token_id
    hp = resolve_hparams("npo", {"alpha": 0.0}, 4)
    ctx = Context(hp=hp, ref_logp={"forget": sequence_logps(model, [collate(fi, pad)])})
    loss, _ = OBJECTIVES.get("npo")(model, {"forget": collate(fi, pad)}, ctx)
    torch.testing.assert_close(loss.detach(), torch.full((6,), 2 / 0.1 * math.log(2)), rtol=1e-5, atol=1e-5)


def test_sequence_logps_independent_of_padding_and_batching(setup):
    tok, fi, _, _ = setup
    model = tiny_lm(tok, L=4)
    pad = tok.pad_token_id
    together = sequence_logps(model, [collate(fi, pad)])
    alone = sequence_logps(model, [collate([it], pad) for it in fi])
    with torch.no_grad():
        direct = torch.tensor([direct_token_logps(model, it).sum().item() for it in fi])
    torch.testing.assert_close(together, direct.float(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(alone, direct.float(), rtol=1e-5, atol=1e-4)
