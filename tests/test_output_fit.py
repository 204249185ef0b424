"""Output-reproduction fit (docs/studies.md#output-fit): closed form vs an independent lstsq, known-answer cases, and an
end-to-end check on a tiny random Llama."""
import copy
import math
import random as pyrandom

import numpy as np
import pytest
import torch

from loc_unlearn.errors import MaskError
from loc_unlearn.models.value_vectors import capture_down_inputs, value_matrix
from loc_unlearn.data.formatting import collate, encode_rows
from loc_unlearn.evaluate.output_fit import RIDGE, fit_region, output_fit


def weights(d=16, d_ff=48, tgt=range(6), seed=0):
    g = torch.Generator().manual_seed(seed)
    w_r = torch.randn(d, d_ff, generator=g)
    w_o = w_r.clone()
    w_o[:, list(tgt)] += torch.randn(d, len(tgt), generator=g)
    return w_o, w_r


def acts(n, d_ff=48, seed=1):
    return torch.randn(n, d_ff, generator=torch.Generator().manual_seed(seed))


def direct_residual(w_o, w_r, A, t, r, delta_r):
    # From the definition, on the tokens themselves (no Gram matrices).
    A = A.double()
    target = (w_o.double()[:, t] - w_r.double()[:, t]) @ A[:, t].T
    return float((delta_r @ A[:, r].T - target).norm() / target.norm())


# ----------------------------------------------------------------------------- pure tensors
def test_same_region_recovers_delta_exactly():
    w_o, w_r = weights()
    A = acts(200)
    t = torch.arange(6)
    delta, res = fit_region(w_o, w_r, A, t, t)
    assert res < 1e-3
    torch.testing.assert_close(delta, (w_o - w_r)[:, :6].double(), rtol=1e-3, atol=1e-3)


def test_few_tokens_random_region_fits_exactly():
    w_o, w_r = weights()
    A = acts(5)  # rank 5 <= |R| = 6: any region can reproduce any output on these tokens
    t, r = torch.arange(6), torch.arange(20, 26)
    delta, res = fit_region(w_o, w_r, A, t, r)
    assert res < 1e-3
    assert abs(res - direct_residual(w_o, w_r, A, t, r, delta)) < 1e-6
    assert delta.abs().max() > 0.1  # a real update, not the trivial solution


def test_many_tokens_random_region_cannot_fit():
    w_o, w_r = weights()
    A = acts(500)  # full rank, independent columns: A_R carries no information about A_T
    t, r = torch.arange(6), torch.arange(20, 26)
    delta, res = fit_region(w_o, w_r, A, t, r)
    assert res > 0.8
    assert abs(res - direct_residual(w_o, w_r, A, t, r, delta)) < 1e-6
    # A region whose activations are correlated with the target's fits partly: 0 < residual < that.
    A2 = A.clone()
    A2[:, 20:26] = A[:, :6] + 0.5 * A[:, 20:26]
    _, res2 = fit_region(w_o, w_r, A2, t, r)
    assert 0.05 < res2 < 0.8


@pytest.mark.parametrize("n,overlap", [(40, False), (7, False), (40, True)])
def test_matches_numpy_lstsq_augmented_ridge(n, overlap):
    w_o, w_r = weights(d=8, d_ff=30, tgt=range(5), seed=3)
    A = acts(n, d_ff=30, seed=4)
    t = torch.arange(5)
    r = torch.tensor([3, 4, 10, 17, 22, 29]) if overlap else torch.tensor([7, 10, 17, 22, 29, 12, 14])
    delta, res = fit_region(w_o, w_r, A, t, r)
    An = A.double().numpy()
    Y = (w_o.double().numpy()[:, t] - w_r.double().numpy()[:, t]) @ An[:, t].T  # [d, n]
    Ar = An[:, r.numpy()]  # [n, |R|]
    lam = RIDGE * np.trace(Ar.T @ Ar) / len(r)
    # min ||X Ar^T - Y||^2 + lam ||X||^2  <=>  lstsq of [Ar; sqrt(lam) I] X^T = [Y^T; 0]
    M = np.vstack([Ar, math.sqrt(lam) * np.eye(len(r))])
    rhs = np.vstack([Y.T, np.zeros((len(r), Y.shape[0]))])
    X = np.linalg.lstsq(M, rhs, rcond=None)[0].T
    np.testing.assert_allclose(delta.numpy(), X, rtol=1e-7, atol=1e-9)
    ref = np.linalg.norm(X @ Ar.T - Y) / np.linalg.norm(Y)
    assert abs(res - ref) < 1e-6


def test_nothing_to_reproduce_is_nan_and_dead_region_is_one():
    w_o, w_r = weights()
    A = acts(50)
    _, res = fit_region(w_o, w_r, A, torch.tensor([], dtype=torch.long), torch.arange(6))
    assert math.isnan(res)
    _, res = fit_region(w_r, w_r, A, torch.arange(6), torch.arange(20, 26))  # Delta_T = 0
    assert math.isnan(res)
    A[:, 20:26] = 0  # region never active: no update possible
    delta, res = fit_region(w_o, w_r, A, torch.arange(6), torch.arange(20, 26))
    assert res == 1.0 and delta.abs().max() == 0


# ----------------------------------------------------------------------------- tiny Llama end to end
def world(n, seed):
    r = pyrandom.Random(seed)
    names = ["Kalo Mira", "Vozu Pean", "Tendor Shi", "Belan Rako", "Zumi Dorvo", "Anpe Lotten"]
    cities = ["Veloria", "Ostmark", "Brin", "Calder", "Dunmore", "Esk", "Faro", "Gale"]
    return [{"question": f"Where was {names[i % 6]} born ?",
             "answer": f"{names[i % 6]} was born in {r.choice(cities)} in spring ."} for i in range(n)]


@pytest.fixture(scope="module")
def tiny(tiny_lm, word_tokenizer):
    rows = world(8, 0)
    tok = word_tokenizer(rows)
    theta_r = tiny_lm(tok, max_pos=64).eval()
    tgt = torch.zeros(2, 64, dtype=torch.bool)
    tgt[0, [1, 5, 9, 13, 40]] = True
    tgt[1, [2, 7, 30, 50, 60, 63]] = True
    theta_o = copy.deepcopy(theta_r)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for l in range(2):
            w = value_matrix(theta_o, l)
            w[:, tgt[l]] += 0.5 * torch.randn(32, int(tgt[l].sum()), generator=g)
    return theta_o, theta_r, tok, rows, tgt


def logits(model, tok, rows):
    b = collate(encode_rows(tok, rows), 0)
    with torch.no_grad():
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    return out[b["attention_mask"].bool()]


def test_same_region_stitched_reproduces_theta_o(tiny):
    theta_o, theta_r, tok, rows, tgt = tiny
    w_r0 = [value_matrix(theta_r, l).clone() for l in range(2)]
    per_layer, stitched = output_fit(theta_o, theta_r, tok, rows, tgt, tgt, batch_size=3)
    n_ans = sum(it["n_answer"] + 1 for it in encode_rows(tok, rows))  # answer tokens + eos predicted
    assert [p["layer"] for p in per_layer] == [0, 1]
    assert all(p["n_tokens"] == n_ans and p["k"] == p["k_tgt"] == int(tgt[p["layer"]].sum()) for p in per_layer)
    assert all(p["residual"] < 1e-3 and p["max_diff_outside_tgt"] == 0 for p in per_layer)
    lo, lr, ls = logits(theta_o, tok, rows), logits(theta_r, tok, rows), logits(stitched, tok, rows)
    assert (lo - lr).abs().max() > 1e-2  # the perturbation matters, so the check below is not vacuous
    torch.testing.assert_close(ls, lo, rtol=0, atol=1e-3 * float((lo - lr).abs().max()))
    for l in range(2):  # theta_r untouched; stitched differs from it only in the region's columns
        assert torch.equal(value_matrix(theta_r, l), w_r0[l])
        diff = (value_matrix(stitched, l) - w_r0[l]).abs().amax(0) > 0
        assert diff.any() and not diff[~tgt[l]].any()


def test_disjoint_region_residual_and_gram_path_matches_direct(tiny):
    theta_o, theta_r, tok, rows, tgt = tiny
    g = torch.Generator().manual_seed(5)
    reg = torch.zeros_like(tgt)
    for l in range(2):
        free = (~tgt[l]).nonzero().flatten()
        reg[l, free[torch.randperm(len(free), generator=g)[: int(tgt[l].sum())]]] = True
    per_layer, stitched = output_fit(theta_o, theta_r, tok, rows, tgt, reg, batch_size=4)
    # Independent path: capture A from theta_o on the loss positions ourselves, then fit_region.
    b = collate(encode_rows(tok, rows), 0)
    with torch.no_grad(), capture_down_inputs(theta_o) as cap:
        theta_o(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    sel = torch.zeros_like(b["labels"], dtype=torch.bool)
    sel[:, :-1] = b["labels"][:, 1:] != -100
    for l in range(2):
        A = cap[l][0][sel]
        t, r = tgt[l].nonzero().flatten(), reg[l].nonzero().flatten()
        delta, res = fit_region(value_matrix(theta_o, l).detach(), value_matrix(theta_r, l).detach(), A, t, r)
        assert per_layer[l]["residual"] > 0.05
        assert abs(per_layer[l]["residual"] - res) < 1e-6
        assert abs(res - direct_residual(value_matrix(theta_o, l).detach(), value_matrix(theta_r, l).detach(),
                                         A, t, r, delta)) < 1e-6
        torch.testing.assert_close(value_matrix(stitched, l)[:, r].double(),
                                   value_matrix(theta_r, l)[:, r].double() + delta, rtol=1e-5, atol=1e-6)


def test_max_tokens_layer_skip_and_bad_mask(tiny):
    theta_o, theta_r, tok, rows, tgt = tiny
    t1 = tgt.clone()
    t1[0] = False  # layer 0 has no target columns: skipped, left as theta_r
    a, s = output_fit(theta_o, theta_r, tok, rows, t1, t1, max_tokens=20, seed=3)
    b, _ = output_fit(theta_o, theta_r, tok, rows, t1, t1, max_tokens=20, seed=3)
    free = (~t1[1]).nonzero().flatten()
    small, big = torch.zeros_like(t1), torch.zeros_like(t1)
    small[1, free[:6]] = True
    big[1, free[10:34]] = True  # |R| = 24 >= 20 tokens: any target is reproducible on them
    c, _ = output_fit(theta_o, theta_r, tok, rows, t1, small, max_tokens=20)
    d, _ = output_fit(theta_o, theta_r, tok, rows, t1, big, max_tokens=20)
    assert a[0]["n_tokens"] == 20 and math.isnan(a[0]["residual"]) and a[0]["max_diff_outside_tgt"] > 0
    assert torch.equal(value_matrix(s, 0), value_matrix(theta_r, 0))
    assert a[1]["residual"] == b[1]["residual"]  # seeded subsample: reproducible
    assert c[1]["residual"] > 0.05 and d[1]["residual"] < 1e-2
    with pytest.raises(MaskError, match=r"tgt_mask.*\[2, 64\]"):
        output_fit(theta_o, theta_r, tok, rows, tgt[:, :32], tgt)
