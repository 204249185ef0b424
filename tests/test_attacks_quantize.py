"""Quantization attack (docs/attacks.md#quantization-attack): RTN against an independent numpy loop, its fixed points and grids, which
weights a model quantizes (tied heads once, GPT-2's transposed Conv1D), and the ES of a memorized tiny
model under 8-bit vs 3-bit."""
import copy
import subprocess
import sys

import numpy as np
import pytest
import torch

from loc_unlearn.attacks import quantize as qmod
from loc_unlearn.attacks.quantize import (quantizable_weights, quantization_attack, quantize_codes, quantize_model,
                                          quantize_model_nf4, quantize_tensor)
from loc_unlearn.errors import UserError

from helpers import add_outlier_channel, author_lm, author_rows, es_mean, memorize, word_tokenizer


def np_rtn(w, bits, group_size, symmetric):
    """Reference RTN written from docs/attacks.md#quantization-attack, one group at a time with numpy (float64, cast back)."""
    x = np.asarray(w, dtype=np.float64)
    out = np.empty_like(x)
    rows = x.reshape(-1, x.shape[-1])
    res = out.reshape(-1, x.shape[-1])
    for r in range(rows.shape[0]):
        for start in range(0, rows.shape[1], group_size):
            g = rows[r, start:start + group_size]
            if symmetric:
                qmax = 2 ** (bits - 1) - 1
                s = np.max(np.abs(g)) / qmax
                if s == 0:
                    s = 1.0
                q = np.clip(np.round(g / s), -qmax, qmax)
                res[r, start:start + group_size] = q * s
            else:
                top = 2 ** bits - 1
                lo, hi = min(g.min(), 0.0), max(g.max(), 0.0)
                s = (hi - lo) / top
                if s == 0:
                    s = 1.0
                z = np.clip(np.round(-lo / s), 0, top)
                q = np.clip(np.round(g / s) + z, 0, top)
                res[r, start:start + group_size] = (q - z) * s
    return out


def rand_w(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    # rows of different magnitudes and a few outliers, like trained weights
    w = torch.randn(*shape, generator=g) * torch.exp(torch.randn(*shape[:-1], 1, generator=g))
    w.view(-1)[:: 97] *= 8
    return w.to(dtype)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("shape,group", [((6, 256), 128), ((5, 300), 128), ((4, 64), 128), ((3, 45), 7),
                                         ((2, 3, 20), 8)])
def test_matches_numpy_reference(symmetric, bits, shape, group):
    w = rand_w(*shape, seed=bits)
    got = quantize_tensor(w, bits, group, symmetric)
    want = np_rtn(w.numpy(), bits, group, symmetric).astype(np.float32)
    assert got.dtype == w.dtype and got.shape == w.shape
    np.testing.assert_array_equal(got.numpy(), want)
    assert not torch.equal(got, w)


def test_shorter_last_group_has_its_own_scale():
    w = torch.cat([torch.full((1, 8), 100.0), torch.tensor([[0.3, -0.2, 0.1]])], 1)  # in = 11, g = 8: tail of 3
    got = quantize_tensor(w, 4, 8, True)
    # the tail is quantized against its own max 0.3 (a shared scale of 100/7 would zero it)
    s = 0.3 / 7
    torch.testing.assert_close(got[0, 8:], torch.tensor([7 * s, -5 * s, 2 * s]))
    codes = quantize_codes(w, 4, 8, True)
    assert [tuple(q.shape) for q, _, _ in codes] == [(1, 1, 8), (1, 1, 3)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bits", [3, 4, 8])
def test_symmetric_is_idempotent_bit_for_bit(dtype, bits):
    w = rand_w(16, 300, seed=1, dtype=dtype)
    once = quantize_tensor(w, bits, 128, True)
    assert torch.equal(quantize_tensor(once, bits, 128, True), once)


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_asymmetric_is_idempotent_up_to_one_ulp(bits):
    w = rand_w(16, 300, seed=2)
    once = quantize_tensor(w, bits, 128, False)
    twice = quantize_tensor(once, bits, 128, False)
    for (q1, _, z1), (q2, _, z2) in zip(quantize_codes(once, bits, 128, False), quantize_codes(twice, bits, 128, False)):
        assert torch.equal(q1, q2) and torch.equal(z1, z2)
    ulp = torch.finfo(torch.float32).eps * once.abs()
    assert bool(((twice - once).abs() <= ulp).all())


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [3, 4, 8])
def test_values_on_the_grid_are_kept_exactly(symmetric, bits):
    """A group already on its b-bit grid (power-of-two scale, extreme codes present) is a fixed point."""
    g = torch.Generator().manual_seed(bits)
    s = 2.0 ** -5
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        q = torch.randint(-qmax, qmax + 1, (8, 64), generator=g).float()
        q[:, 0] = qmax  # the group max sets the scale back to s
        w = q * s
    else:
        top = 2 ** bits - 1
        z = torch.randint(0, top + 1, (8, 1), generator=g).float()
        q = torch.randint(0, top + 1, (8, 64), generator=g).float()
        q[:, 0], q[:, 1] = 0, top  # range = top * s, so the scale is s again
        w = (q - z) * s
    assert torch.equal(quantize_tensor(w, bits, 64, symmetric), w)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_at_most_2_pow_b_distinct_values_per_group(symmetric, bits):
    w = rand_w(8, 200, seed=3)
    got = quantize_tensor(w, bits, 32, symmetric)
    for r in range(8):
        for start in range(0, 200, 32):
            n = got[r, start:start + 32].unique().numel()
            assert n <= 2 ** bits - (1 if symmetric else 0)


@pytest.mark.parametrize("symmetric", [True, False])
def test_zero_range_and_constant_groups(symmetric):
    w = torch.zeros(3, 16)
    w[1] = 0.75  # constant nonzero group
    w[2, :8] = -2.0
    got = quantize_tensor(w, 4, 8, symmetric)
    assert torch.isfinite(got).all()
    assert torch.equal(got[0], torch.zeros(16))  # all-zero groups: no division by zero, exactly 0
    assert torch.equal(got[2, 8:], torch.zeros(8))
    torch.testing.assert_close(got[1], w[1])
    torch.testing.assert_close(got[2, :8], w[2, :8])
    # group_size 1: every weight is its own group's extreme value, reproduced exactly
    v = rand_w(4, 10, seed=4)
    assert torch.equal(quantize_tensor(v, 3, 1, symmetric), v)


def test_bad_arguments_are_user_errors():
    w = torch.randn(2, 8)
    for kw in ({"bits": 1}, {"bits": 17}, {"bits": 4, "group_size": 0}):
        with pytest.raises(UserError):
            quantize_tensor(w, **{"group_size": 4, **kw})
    with pytest.raises(UserError, match="include"):
        quantizable_weights(torch.nn.Linear(2, 2), include=("everything",))


# ----------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def tok_rows():
    rows = author_rows(4)
    return word_tokenizer(rows), rows


def test_default_scope_is_decoder_linear_weights(tok_rows):
    tok, _ = tok_rows
    model = author_lm(tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summary = quantize_model(model, 4, 16)
    after = model.state_dict()
    linear = {n + ".weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}
    assert set(summary["tensors"]) == linear and len(linear) == 2 * 7
    for k, v in before.items():
        if k in linear:
            assert torch.equal(after[k], quantize_tensor(v, 4, 16, True)), k
        else:  # embeddings, lm_head, norms
            assert torch.equal(after[k], v), k
    assert summary["n_weights"] == sum(before[k].numel() for k in linear) and 0 < summary["rel_error"] < 1


def test_tied_head_is_quantized_once(tok_rows, monkeypatch):
    tok, _ = tok_rows
    model = author_lm(tok, tie=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    orig = model.lm_head.weight.detach().clone()
    names = [n for n, _, _ in quantizable_weights(model, ("layers", "lm_head", "embed"))]
    assert sum(n.endswith(("embed_tokens.weight", "lm_head.weight")) for n in names) == 1
    calls = []
    real = qmod.quantize_tensor
    monkeypatch.setattr(qmod, "quantize_tensor", lambda w, *a: calls.append(w.shape) or real(w, *a))
    summary = quantize_model(model, 3, 16, False, include=("layers", "lm_head", "embed"))
    assert len(calls) == len(names) and summary["tied_head"]
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, real(orig, 3, 16, False))


def test_gpt2_conv1d_groups_run_over_the_input_dim():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=2))
    w = model.transformer.h[0].attn.c_attn.weight.detach().clone()  # Conv1D: [in, out]
    ws = {n: t for n, _, t in quantizable_weights(model)}
    assert ws["transformer.h.0.attn.c_attn.weight"] is True
    quantize_model(model, 4, 8)
    assert torch.equal(model.transformer.h[0].attn.c_attn.weight, quantize_tensor(w.T, 4, 8, True).T)


@pytest.fixture(scope="module")
def memorized(tok_rows, tmp_path_factory):
    """A tiny Llama that memorized its rows (ES = 1), with one outlier input channel per layer made by a
    function-preserving rescaling (RMSNorm gain / c, matching weight columns * c), as in real LLMs whose
    outlier features set each group's range."""
    tok, rows = tok_rows
    model = memorize(author_lm(tok, d=32), tok, rows, tmp_path_factory.mktemp("mem"))
    es0 = es_mean(model, tok, rows)
    add_outlier_channel(model, 30.0)
    return model, tok, rows, es0


def test_8_bit_changes_es_far_less_than_3_bit(memorized):
    model, tok, rows, es0 = memorized
    assert es0 == 1.0
    assert es_mean(model, tok, rows) == es0  # the rescaling changed nothing
    es = {}
    for b in (8, 3):
        m = copy.deepcopy(model)
        quantize_model(m, b, 32)
        es[b] = es_mean(m, tok, rows)
    assert abs(es0 - es[8]) <= 0.02
    assert es0 - es[3] >= 0.2, es


def test_quantization_attack_reports_and_restores(memorized):
    model, tok, rows, _ = memorized
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = quantization_attack(model, tok, {"forget": rows[:8], "retain": rows[8:]}, bits=(8, 3), group_size=32)
    assert set(res) == {"none", "8", "3"}
    assert res["none"]["FS"] == 1 - es_mean(model, tok, rows[:8]) and res["none"]["RS"] == es_mean(model, tok, rows[8:])
    assert res["3"]["FS"] > res["8"]["FS"] and res["3"]["quantize"]["bits"] == 3
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error path without a GPU")
def test_nf4_needs_cuda_and_is_not_imported_eagerly(tok_rows):
    tok, _ = tok_rows
    with pytest.raises(UserError, match="CUDA"):
        quantize_model_nf4(author_lm(tok))
    code = ("import sys, loc_unlearn.attacks, loc_unlearn.stages, loc_unlearn.commands.attack; "
            "assert 'bitsandbytes' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
