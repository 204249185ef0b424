"""Diagnostics of a region of value vectors (the testbed's fidelity checks, issue 11).

`concentrated(counts)`: more than half of a mask's vectors in one layer (attribution masks that are
mostly layer 0 say more about per-layer score scales than about where the facts are).

`norm_ratio(model, mask)` = mean ||v||_2 over the masked value vectors / mean ||v||_2 over the rest,
overall and per layer. An injection that inflates V_tgt's norms (ratio >> 1 on theta_o, ~1 on theta_r)
hands any norm-sensitive localizer the answer and lets Oracle edit unusually large columns, so the
controlled study would no longer test localization of ordinarily stored knowledge.
"""
from __future__ import annotations

import torch

from ..models.value_vectors import shape, value_matrix


def column_norms(model) -> torch.Tensor:
    """[L, d_ff] float64 ||v_{l,i}||_2 of every value vector."""
    with torch.no_grad():
        return torch.stack([value_matrix(model, l).detach().cpu().double().norm(dim=0)
                            for l in range(shape(model)[0])])


def _ratio(norms: torch.Tensor, sel: torch.Tensor) -> float | None:
    # None where one side is empty (a layer without masked vectors): there is nothing to compare.
    if not sel.any() or sel.all():
        return None
    return float(norms[sel].mean() / norms[~sel].mean())


def norm_ratio(model, mask: torch.Tensor) -> dict:
    """{"overall": r, "per_layer": [r_l or None], "mean_norm_in": m, "mean_norm_out": m'} for `mask`
    [L, d_ff] bool (True = in the region)."""
    norms = column_norms(model)
    sel = torch.as_tensor(mask).bool().cpu()
    return {"overall": _ratio(norms, sel), "per_layer": [_ratio(norms[l], sel[l]) for l in range(len(sel))],
            "mean_norm_in": float(norms[sel].mean()), "mean_norm_out": float(norms[~sel].mean())}


def concentrated(counts: list[int]) -> bool:
    """True when more than half of a mask's value vectors (per-layer `counts`) sit in one layer."""
    return max(counts) > sum(counts) / 2
