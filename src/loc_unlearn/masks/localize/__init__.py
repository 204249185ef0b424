"""Localization: score every value vector, keep the top `ratio` as a Mask (SPEC §6).

Each method lives in its own file and registers a score function
`fn(cfg: LocalizeConfig, model, tokenizer, forget_rows, retain_rows) -> Tensor [L, d_ff]` (float;
higher = more likely to hold the forget knowledge; -inf = never select). `localize` turns scores
into a Mask with `select_topk`, so every method shares the exact-size and tie-breaking rules.
"""
from __future__ import annotations

import torch

from ...checks import check_fraction
from ...errors import ConfigError, MaskError
from ..mask import Mask
from .registry import LOCALIZERS



def _check_ratio(ratio) -> float:
    return check_fraction("localize.ratio", ratio)  # the config's rule and message (config.py)


def topk_count(ratio: float, n: int) -> int:
    """round(ratio * n) (SPEC §6); Python rounding so every module agrees on the same size."""
    k = round(_check_ratio(ratio) * n)
    if k < 1:
        raise ConfigError(f"config key 'localize.ratio': {ratio} of {n} value vectors selects none; use a larger ratio")
    return k


def _topk_flat(scores: torch.Tensor, k: int) -> torch.Tensor:
    # Stable descending sort: equal scores keep index order, so ties go to the lower (layer, column)
    # index deterministically on every machine. NaN would sort first; treat it as the lowest score.
    s = torch.nan_to_num(scores.double(), nan=float("-inf"))
    order = torch.sort(s, descending=True, stable=True).indices[:k]
    out = torch.zeros(s.numel(), dtype=torch.bool)
    out[order] = True
    return out


def select_topk(scores: torch.Tensor, ratio: float, scope: str = "global", k=None) -> torch.Tensor:
    """Bool [L, d_ff] of the top scores: exactly round(ratio*L*d_ff) (global) or round(ratio*d_ff)
    per layer (per_layer). `k` overrides the size: an int (global) or a list of per-layer counts.
    Ties are broken by flat index (lower first)."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be [L, d_ff], got {tuple(scores.shape)}")
    L, d_ff = scores.shape
    scores = scores.detach().cpu()
    if scope == "global":
        k = topk_count(ratio, L * d_ff) if k is None else int(k)
        return _topk_flat(scores.flatten(), k).view(L, d_ff)
    if scope == "per_layer":
        ks = [topk_count(ratio, d_ff)] * L if k is None else list(k)
        if len(ks) != L:
            raise ValueError(f"per-layer counts: expected {L}, got {len(ks)}")
        return torch.stack([_topk_flat(scores[l], ks[l]) for l in range(L)])
    raise ConfigError(f"config key 'localize.scope': expected 'global' or 'per_layer', got {scope!r}")


def score(method: str, model, tokenizer, forget_rows, retain_rows, cfg) -> torch.Tensor:
    """Scores [L, d_ff] (float32 or float64, cpu) of `method` (for inspection; `localize` uses the same)."""
    fn = LOCALIZERS.get(method)
    s = fn(cfg, model, tokenizer, forget_rows, retain_rows).detach().cpu()
    return s if s.dtype == torch.float64 else s.float()  # float64 kept: casting random scores would create ties


def localize(cfg, model, tokenizer, forget_rows, retain_rows) -> Mask:
    """Run `cfg.method` and return its Mask with metadata (SPEC §6)."""
    from ...models.value_vectors import fingerprint, shape

    LOCALIZERS.get(cfg.method)  # unknown name -> error listing the known ones, before any work
    L, d_ff = shape(model)
    k = None
    ratio = cfg.ratio
    if cfg.method == "random_complement":
        # Same size (and, per layer, the same per-layer counts) as the source mask (SPEC §6/§7).
        if not cfg.source_mask:
            raise ConfigError("config key 'localize.source_mask': random_complement needs the path of the mask to complement")
        src = Mask.load(cfg.source_mask, expect_shape=(L, d_ff))
        k = src.count if cfg.scope == "global" else src.per_layer_counts()
        free = (~src.mask).sum(dim=1).tolist()
        if cfg.scope == "global" and src.count > L * d_ff - src.count:
            raise MaskError(f"mask {cfg.source_mask} selects {src.count} of {L * d_ff} value vectors; its complement "
                            f"({L * d_ff - src.count}) is too small for a disjoint mask of the same size")
        if cfg.scope == "per_layer" and any(c > f for c, f in zip(k, free)):
            raise MaskError(f"mask {cfg.source_mask}: some layer's complement is smaller than its count "
                            f"(counts {k}, free {free}); use localize.scope=global")
        ratio = src.ratio
    elif cfg.method == "random_layer_matched":
        if not cfg.source_mask:
            raise ConfigError("config key 'localize.source_mask': random_layer_matched needs the path of the mask "
                              "whose per-layer counts it copies")
        src = Mask.load(cfg.source_mask, expect_shape=(L, d_ff))
        k, ratio = src.per_layer_counts(), src.ratio
    else:
        _check_ratio(ratio)
    s = score(cfg.method, model, tokenizer, forget_rows, retain_rows, cfg)
    if tuple(s.shape) != (L, d_ff):
        raise RuntimeError(f"{cfg.method} returned scores {tuple(s.shape)}, expected {(L, d_ff)}")
    scope = "per_layer" if cfg.method == "random_layer_matched" else cfg.scope
    sel = select_topk(s, ratio, scope, k=k)
    meta = {"method": cfg.method, "ratio": float(ratio), "scope": scope, "seed": int(cfg.seed),
            "source_mask": cfg.source_mask if cfg.method.startswith("random_") else "",
            "fingerprint": fingerprint(model)}
    if cfg.method == "norm" and cfg.reference:
        meta["reference"] = cfg.reference  # ||v - v_ref||: which reference the scores were taken against
    return Mask(sel, meta)


# Register the methods (each file adds itself to LOCALIZERS).
from . import random, activation, memflex, wagle, gradient, norm  # noqa: E402,F401

__all__ = ["LOCALIZERS", "localize", "score", "select_topk", "topk_count"]
