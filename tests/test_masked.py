"""MaskedDelta (docs/localizers.md#applying-a-mask): only masked value vectors change, gradients and AdamW equal
training the whole W_down with a gradient mask and decay restricted to the mask."""
import copy
import functools

import pytest
import torch
import torch.nn.functional as F

from loc_unlearn.errors import MaskError
from loc_unlearn.models.value_vectors import value_matrix
from loc_unlearn.train.masked import MaskedDelta

from helpers import rand_mask, tiny_lm


tiny_llama = functools.partial(tiny_lm, vocab=50, L=3, max_pos=64)
tiny_gpt2 = functools.partial(tiny_lm, vocab=50, arch="gpt2", max_pos=64)


def batch(vocab=50, B=4, T=12, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, T), generator=g)


def lm_loss(model, ids):
    out = model(input_ids=ids)
    return F.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


def test_zero_delta_is_the_start_model_and_gradients_match_full_weight_gradient():
    model = tiny_llama()
    ref = copy.deepcopy(model)
    mask = rand_mask(3, 64)
    md = MaskedDelta(model, mask)
    ids = batch()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, ref(input_ids=ids).logits)
    lm_loss(model, ids).backward()
    lm_loss(ref, ids).backward()
    for l in range(3):
        full = ref.model.layers[l].mlp.down_proj.weight.grad  # [d, d_ff], independent autograd
        torch.testing.assert_close(md.deltas[l].grad, full[:, mask[l]], rtol=1e-5, atol=1e-7)
    # the deltas are registered on the model (engines see them), and nothing else has a gradient
    named = dict(model.named_parameters())
    assert [n for n in named if n.endswith(".delta")] == [f"model.layers.{l}.mlp.down_proj.delta" for l in range(3)]
    assert all(named[f"model.layers.{l}.mlp.down_proj.delta"] is md.deltas[l] for l in range(3))
    assert [n for n, p in named.items() if p.grad is not None] == [f"model.layers.{l}.mlp.down_proj.delta" for l in range(3)]
    assert sum(p.numel() for p in md.parameters()) == int(mask.sum()) * 32


def _reference_masked_adamw(model, mask, ids_list, lr, wd):
    """All of W_down trainable, gradient * mask, torch AdamW with decay; the unmasked columns are put back
    after each step, which is exactly 'decay only on masked columns' (their Adam update is 0/(0+eps)=0)."""
    for p in model.parameters():
        p.requires_grad_(False)
    ws = [model.model.layers[l].mlp.down_proj.weight for l in range(len(mask))]
    for w in ws:
        w.requires_grad_(True)
    opt = torch.optim.AdamW(ws, lr=lr, weight_decay=wd)
    for ids in ids_list:
        opt.zero_grad()
        lm_loss(model, ids).backward()
        saved = [w.detach().clone() for w in ws]
        for w, m in zip(ws, mask):
            w.grad *= m.float()[None, :]
        opt.step()
        with torch.no_grad():
            for w, s, m in zip(ws, saved, mask):
                w[:, ~m] = s[:, ~m]
    return model


def _masked_train(model, mask, ids_list, lr, wd):
    md = MaskedDelta(model, mask)
    opt = torch.optim.AdamW(md.parameters(), lr=lr, weight_decay=0.0)
    for ids in ids_list:
        opt.zero_grad()
        lm_loss(model, ids).backward()
        md.apply_weight_decay(lr, wd)
        opt.step()
    return md


def test_masked_adamw_equals_gradient_masked_full_wdown_and_unmasked_bit_identical():
    model = tiny_llama()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    mask = rand_mask(3, 64)
    ref = _reference_masked_adamw(copy.deepcopy(model), mask, [batch(seed=s) for s in range(4)], 1e-2, 0.1)
    md = _masked_train(model, mask, [batch(seed=s) for s in range(4)], 1e-2, 0.1)
    snap = md.snapshot()
    md.merge()
    md.check_unmasked_unchanged(start)
    md.check_unmasked_unchanged(snap)
    for l in range(3):
        w, w_ref = model.model.layers[l].mlp.down_proj.weight, ref.model.layers[l].mlp.down_proj.weight
        w0 = start[f"model.layers.{l}.mlp.down_proj.weight"]
        assert torch.equal(w[:, ~mask[l]], w0[:, ~mask[l]])  # bit-identical outside the mask
        assert (w[:, mask[l]] != w0[:, mask[l]]).float().mean() > 0.9  # the masked columns did train
        torch.testing.assert_close(w, w_ref, rtol=1e-4, atol=1e-6)
    for k, v in model.state_dict().items():
        if "down_proj" not in k:
            assert torch.equal(v, start[k]), k
    # merged: the original modules are back (plain state-dict names, no delta)
    assert type(model.model.layers[0].mlp.down_proj) is torch.nn.Linear
    assert not any(k.endswith((".delta", ".idx")) for k in model.state_dict())


def test_check_detects_a_changed_unmasked_entry():
    model = tiny_llama()
    mask = rand_mask(3, 64)
    md = MaskedDelta(model, mask)
    snap = md.snapshot()
    l, col = 1, int((~mask[1]).nonzero()[0])
    with torch.no_grad():
        model.model.layers[l].mlp.down_proj.weight[3, col] += 1e-6
    with pytest.raises(AssertionError, match="outside the mask"):
        md.check_unmasked_unchanged(snap)
    model2 = tiny_llama()
    md2 = MaskedDelta(model2, mask)
    snap2 = md2.snapshot()
    with torch.no_grad():
        model2.model.norm.weight[0] += 1.0  # a non-down-proj parameter
    with pytest.raises(AssertionError, match="norm"):
        md2.check_unmasked_unchanged(snap2)


def test_disabled_runs_start_model_and_merge_equals_delta_forward():
    model = tiny_llama()
    ref = copy.deepcopy(model)
    mask = rand_mask(3, 64)
    md = _masked_train(model, mask, [batch(seed=s) for s in range(2)], 1e-2, 0.0)
    ids = batch(seed=9)
    with torch.no_grad():
        trained = model(input_ids=ids).logits
        with md.disabled():
            start = model(input_ids=ids).logits
        assert torch.equal(start, ref(input_ids=ids).logits)
        assert not torch.allclose(trained, start)
        md.merge()
        torch.testing.assert_close(model(input_ids=ids).logits, trained, rtol=1e-5, atol=1e-6)


def test_state_dict_roundtrip_and_mask_errors():
    model = tiny_llama()
    mask = rand_mask(3, 64)
    md = _masked_train(model, mask, [batch()], 1e-2, 0.0)
    sd = md.state_dict()
    assert set(sd) == {f"{k}.{l}" for k in ("idx", "delta") for l in range(3)}
    md2 = MaskedDelta(tiny_llama(), mask)
    md2.load_state_dict(sd)
    for a, b in zip(md.deltas, md2.deltas):
        assert torch.equal(a, b)
    with pytest.raises(MaskError, match="different mask"):
        MaskedDelta(tiny_llama(), rand_mask(3, 64, seed=5)).load_state_dict(sd)
    with pytest.raises(MaskError, match=r"\[3, 64\]"):
        MaskedDelta(tiny_llama(), torch.zeros(2, 64, dtype=torch.bool))


def test_bf16_autocast_matches_gradient_masked_reference():
    """The fold-before-matmul formulation matches masked training of W under bf16 autocast."""
    model = tiny_llama()
    ref = copy.deepcopy(model)
    mask = rand_mask(3, 64)
    ids_list = [batch(seed=s) for s in range(3)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        md = _masked_train(model, mask, ids_list, 1e-3, 0.0)
        _reference_masked_adamw(ref, mask, ids_list, 1e-3, 0.0)
    md.merge()
    for l in range(3):
        w0 = tiny_llama().model.layers[l].mlp.down_proj.weight
        w, wr = model.model.layers[l].mlp.down_proj.weight, ref.model.layers[l].mlp.down_proj.weight
        upd, upd_ref = (w - w0)[:, mask[l]], (wr - w0)[:, mask[l]]
        # Adam updates are ~lr per entry; bf16 noise may flip a few tiny gradients, not the bulk.
        assert (upd - upd_ref).abs().mean() < 0.01 * upd_ref.abs().mean()  # measured ~0.3%


def test_gpt2_conv1d_masked_training():
    model = tiny_gpt2()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    mask = rand_mask(2, 128)
    md = MaskedDelta(model, mask)
    opt = torch.optim.AdamW(md.parameters(), lr=1e-2, weight_decay=0.0)
    lm_loss(model, batch()).backward()
    md.apply_weight_decay(1e-2, 0.1)
    opt.step()
    md.merge()
    md.check_unmasked_unchanged(start)
    for l in range(2):
        vm, vm0 = value_matrix(model, l), start[f"transformer.h.{l}.mlp.c_proj.weight"].T
        assert torch.equal(vm[:, ~mask[l]], vm0[:, ~mask[l]])
        assert not torch.equal(vm[:, mask[l]], vm0[:, mask[l]])


def test_unmasked_mode_trains_everything():
    model = tiny_llama()
    md = MaskedDelta(model, None)
    assert len(md.parameters()) == len(list(model.parameters()))
    with pytest.raises(RuntimeError):
        with md.disabled():
            pass
