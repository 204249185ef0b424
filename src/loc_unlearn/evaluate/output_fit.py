"""Output-reproduction analysis, the paper's Figure 1 (docs/studies.md#output-fit).

theta_o and theta_r differ only in the V_tgt columns T of each W_down, so at layer l the change of the
MLP output on a token with down-proj input a is Delta_T a_T (Delta_T = W_o[:, T] - W_r[:, T]). Can a
different region R reproduce it? Stacking the forget tokens as columns of A (A_T = rows T of A), that is
ridge least squares

    Delta_R = argmin ||Delta_R A_R - Delta_T A_T||_F^2 + lambda ||Delta_R||_F^2
            = Delta_T A_T A_R^T (A_R A_R^T + lambda I)^-1,   lambda = 1e-4 tr(A_R A_R^T) / |R|

reported as the relative residual ||Delta_R A_R - Delta_T A_T||_F / ||Delta_T A_T||_F
(1 = R cannot move the output at all, 0 = exact reproduction).

Everything is computed from the Gram matrix G = A_U A_U^T over U = T u R, accumulated in float64 in one
streaming pass over the forget set: memory is |U|^2 per layer instead of tokens x d_ff (for an 8B model
and forget10 that is ~2 GB instead of ~30 GB), and the residual expands exactly into Gram blocks:
||Delta_R A_R - Delta_T A_T||^2 = tr(D_R G_RR D_R^T) - 2 tr(D_R G_RT D_T^T) + tr(D_T G_TT D_T^T).

Which tokens: by default the positions whose next token is a trained label (answer tokens and the eos
after them), i.e. the answer-predicting positions together with every answer token. These are exactly
the positions where the injection loss asked theta_o to change its prediction, so "reproducing theta_o
on the forget set" means reproducing the MLP output there. `positions="all"` also fits prompt tokens.

Which inputs: A is captured from theta_o, whose MLP outputs are the target. At layer 0 theta_o and
theta_r see identical inputs, deeper they differ (earlier layers changed). The stitched model
theta_r + Delta_R runs on its own inputs, so the per-layer residual measures how well one layer can be
fitted in isolation, and the stitched model's FS/RS (evaluated by the caller) the end-to-end effect.

This module is the math; stages/analysis.py runs it as a cached stage of the controlled study.
"""
from __future__ import annotations

import copy
import math

import torch

from ..data.formatting import collate, encode_rows, length_batches, pad_id
from ..errors import MaskError, UserError
from ..models.value_vectors import capture_down_inputs, shape, value_matrix
from ..utils import eval_mode, progress

RIDGE = 1e-4  # lambda = RIDGE * tr(A_R A_R^T) / |R| (docs/studies.md#output-fit): scale-free, only regularizes null directions


def _fit_gram(d_t: torch.Tensor, g_tt: torch.Tensor, g_rt: torch.Tensor, g_rr: torch.Tensor):
    """The ridge fit from Gram blocks (all float64). d_t [d, |T|], g_tt [|T|,|T|], g_rt [|R|,|T|],
    g_rr [|R|,|R|]. Returns (delta_R [d, |R|], relative residual; nan when the target is zero)."""
    d, k_r = d_t.shape[0], g_rr.shape[0]
    target2 = float(torch.einsum("dt,ts,ds->", d_t, g_tt, d_t)) if d_t.numel() else 0.0
    if not target2 > 0:  # no target columns, no tokens, or no change: nothing to reproduce
        return torch.zeros(d, k_r, dtype=torch.float64), math.nan
    tr = float(torch.trace(g_rr)) if k_r else 0.0
    if not tr > 0:  # empty region or a region that is never active: it cannot move the output
        return torch.zeros(d, k_r, dtype=torch.float64), 1.0
    lam = RIDGE * tr / k_r
    rhs = g_rt @ d_t.T  # [|R|, d] = A_R A_T^T Delta_T^T
    # (G_RR + lambda I) is symmetric positive definite: solve, never invert.
    delta_r = torch.linalg.solve(g_rr + lam * torch.eye(k_r, dtype=g_rr.dtype), rhs).T
    fit2 = float(torch.einsum("dr,rs,ds->", delta_r, g_rr, delta_r))
    cross = float(torch.einsum("dr,rt,dt->", delta_r, g_rt, d_t))
    resid2 = max(fit2 - 2 * cross + target2, 0.0)  # rounding can make an exact fit slightly negative
    return delta_r, math.sqrt(resid2 / target2)


def _union(tgt_idx: torch.Tensor, reg_idx: torch.Tensor):
    """U = sorted T u R and where T and R sit inside U (R may overlap T, e.g. R == T)."""
    u = torch.unique(torch.cat([tgt_idx, reg_idx]).long())
    return u, torch.searchsorted(u, tgt_idx.long()), torch.searchsorted(u, reg_idx.long())


def _fit_layer(w_o, w_r, g_uu, u, tpos, rpos):
    tgt_idx = u[tpos]
    d_t = (w_o[:, tgt_idx].double() - w_r[:, tgt_idx].double()).cpu()
    g = g_uu.double().cpu()
    return _fit_gram(d_t, g[tpos][:, tpos], g[rpos][:, tpos], g[rpos][:, rpos])


def fit_region(W_o: torch.Tensor, W_r: torch.Tensor, A: torch.Tensor, tgt_idx, reg_idx):
    """Fit region `reg_idx` of one layer to reproduce the output change of region `tgt_idx` (docs/studies.md#output-fit).

    W_o, W_r: [d, d_ff] down-proj weights of theta_o / theta_r. A: [n_tokens, d_ff] down-proj inputs
    (one row per token). tgt_idx, reg_idx: column indices. Returns (delta_R [d, |R|] float64, relative
    residual) with residual nan when there is nothing to reproduce (no target columns or Delta_T A_T = 0).
    """
    tgt_idx, reg_idx = torch.as_tensor(tgt_idx).long().cpu(), torch.as_tensor(reg_idx).long().cpu()
    if W_o.shape != W_r.shape or A.dim() != 2 or A.shape[1] != W_o.shape[1]:
        raise UserError(f"fit_region: expected W_o, W_r [d, d_ff] and A [n_tokens, d_ff]; got "
                         f"{tuple(W_o.shape)}, {tuple(W_r.shape)}, {tuple(A.shape)}")
    u, tpos, rpos = _union(tgt_idx, reg_idx)
    a_u = A[:, u.to(A.device)].double()
    return _fit_layer(W_o, W_r, a_u.T @ a_u, u, tpos, rpos)


def _as_mask(m, name: str, want: tuple[int, int]) -> torch.Tensor:
    t = m.mask if hasattr(m, "mask") else m
    if not isinstance(t, torch.Tensor) or t.dtype != torch.bool or tuple(t.shape) != want:
        got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise MaskError(f"output_fit: {name} must be a bool mask of shape [L, d_ff] = {list(want)} "
                        f"matching the model; got {got}")
    return t.cpu()


def _positions(item: dict, which: str) -> torch.Tensor:
    """Bool over the item's positions: which down-proj inputs enter the fit (see module docstring)."""
    n = len(item["input_ids"])
    if which == "all":
        return torch.ones(n, dtype=torch.bool)
    labels = torch.tensor(item["labels"])
    sel = torch.zeros(n, dtype=torch.bool)
    sel[:-1] = labels[1:] != -100  # position t predicts token t+1
    return sel


@torch.no_grad()
def output_fit(theta_o, theta_r, tokenizer, forget_rows, tgt_mask, region_mask, batch_size: int = 16,
               max_tokens: int | None = None, max_length: int | None = None, positions: str = "answer",
               seed: int = 0):
    """Per-layer output-reproduction fit of `region_mask` to theta_o - theta_r (docs/studies.md#output-fit).

    tgt_mask (V_tgt) and region_mask (R, e.g. the random_complement of V_tgt): bool [L, d_ff] tensors
    or Masks. A comes from theta_o on `forget_rows` (module docstring). `max_tokens` keeps a seeded
    uniform sample of that many token positions (memory/time cap; None = all).
    Returns (per_layer, stitched): per_layer = [dict(layer, residual, n_tokens, k, k_tgt,
    max_diff_outside_tgt)] where k = |R| in that layer and residual is nan for a skipped layer (no
    V_tgt columns or no change there); stitched = a copy of theta_r with W_down[:, R] += Delta_R.
    """
    if positions not in ("answer", "all"):
        raise UserError(f"output_fit: positions must be 'answer' or 'all', got {positions!r}")
    if not forget_rows:
        raise UserError("output_fit: forget_rows is empty")
    L, d_ff = shape(theta_o)
    if shape(theta_r) != (L, d_ff):
        raise UserError(f"output_fit: theta_o has value-vector shape {(L, d_ff)} but theta_r {shape(theta_r)}")
    tgt = _as_mask(tgt_mask, "tgt_mask", (L, d_ff))
    reg = _as_mask(region_mask, "region_mask", (L, d_ff))

    items = encode_rows(tokenizer, forget_rows, max_length)
    sels = [_positions(it, positions) for it in items]
    n_all = sum(int(s.sum()) for s in sels)
    if max_tokens is not None and max_tokens < n_all:
        # Uniform over tokens (not whole examples), seeded, so the cap is reproducible and unbiased.
        keep = torch.zeros(n_all, dtype=torch.bool)
        keep[torch.randperm(n_all, generator=torch.Generator().manual_seed(seed))[:max_tokens]] = True
        off = 0
        for s in sels:
            k = int(s.sum())
            s[s.clone()] = keep[off: off + k]
            off += k

    layers = [l for l in range(L) if tgt[l].any()]
    dev = next(theta_o.parameters()).device
    unions = {l: _union(tgt[l].nonzero().flatten(), reg[l].nonzero().flatten()) for l in layers}
    grams = {l: torch.zeros(len(unions[l][0]), len(unions[l][0]), dtype=torch.float64, device=dev) for l in layers}
    n_tok = 0
    with eval_mode(theta_o), capture_down_inputs(theta_o, layers) as acts:
        bs = length_batches([len(it["input_ids"]) for it in items], batch_size, shuffle=False)
        for idx in progress(bs, desc="output fit: forget", leave=False):
            b = collate([items[i] for i in idx], pad_id(tokenizer))
            sel = torch.zeros_like(b["attention_mask"], dtype=torch.bool)
            for j, i in enumerate(idx):
                sel[j, : len(sels[i])] = sels[i]
            theta_o(input_ids=b["input_ids"].to(dev), attention_mask=b["attention_mask"].to(dev))
            sel = sel.to(dev)
            for l in layers:
                a = acts[l].pop()[sel][:, unions[l][0].to(dev)].double()  # [n, |U|]
                grams[l] += a.T @ a
            n_tok += int(sel.sum())

    stitched = copy.deepcopy(theta_r)
    per_layer = []
    for l in range(L):
        w_o, w_r = value_matrix(theta_o, l).detach(), value_matrix(theta_r, l).detach()
        outside = ~tgt[l].to(w_o.device)
        row = {"layer": l, "residual": math.nan, "n_tokens": n_tok, "k": int(reg[l].sum()),
               "k_tgt": int(tgt[l].sum()),
               # The analysis assumes theta_o - theta_r lives in V_tgt only; report if it does not.
               "max_diff_outside_tgt": float((w_o[:, outside] - w_r[:, outside]).abs().max()) if outside.any() else 0.0}
        if l in grams:
            u, tpos, rpos = unions[l]
            delta_r, row["residual"] = _fit_layer(w_o, w_r, grams[l], u, tpos, rpos)
            if not math.isnan(row["residual"]) and len(rpos):
                w_s = value_matrix(stitched, l)
                r_idx = u[rpos].to(w_s.device)
                w_s[:, r_idx] += delta_r.to(w_s.device, w_s.dtype)
        per_layer.append(row)
    return per_layer, stitched
