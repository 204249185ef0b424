"""Localization: score every value vector, keep the top `ratio` as a Mask (docs/localizers.md#top-k-selection).

Each method lives in its own file here (or in a plug-in file: loc_unlearn.plugins) and registers a score
function `fn(cfg: LocalizeConfig, model, tokenizer, forget_rows, retain_rows) -> Tensor [L, d_ff]` (float;
higher = more likely to hold the forget knowledge; -inf = never select) with `@localizer(name, params=...,
**needs)`; `cfg.params` holds its resolved hyperparameters. `localize` turns scores into a Mask with
`select_topk`, so every method shares the exact-size and tie-breaking rules, and does what the method
declares (registry.Localizer): a source mask that sizes the pick or is excluded, a reference recorded.
Every module of this package is imported below, so a new method file registers itself.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil

import torch

from ...checks import check_fraction
from ...errors import ConfigError, MaskError
from ...registry import LOCALIZERS, resolve_params
from ..mask import Mask



def _check_ratio(ratio) -> float:
    return check_fraction("localize.ratio", ratio)  # the config's rule and message (checks.py)


def topk_count(ratio: float, n: int) -> int:
    """round(ratio * n) (docs/localizers.md#top-k-selection); Python rounding so every module agrees on the same size."""
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


def score(method: str, model, tokenizer, forget_rows, retain_rows, lcfg) -> torch.Tensor:
    """Scores [L, d_ff] (float32 or float64, cpu) of `method` (for inspection; `localize` uses the same), its
    hyperparameters resolved from lcfg.params, the source mask's vectors at -inf when it excludes them."""
    loc = LOCALIZERS.get(method)
    lcfg = dataclasses.replace(lcfg, params=resolve_params(loc, lcfg.params, "localize"))
    s = loc.fn(lcfg, model, tokenizer, forget_rows, retain_rows).detach().cpu()
    s = s if s.dtype == torch.float64 else s.float()  # float64 kept: casting random scores would create ties
    if loc.excludes_source:
        s[Mask.load(lcfg.source_mask, expect_shape=tuple(s.shape)).mask] = float("-inf")
    return s


def localize(lcfg, model, tokenizer, forget_rows, retain_rows) -> Mask:
    """Run `lcfg.method` and return its Mask with metadata (docs/localizers.md#mask-files)."""
    from ...models.value_vectors import fingerprint, shape

    loc = LOCALIZERS.get(lcfg.method)  # unknown name -> error listing the known ones, before any work
    L, d_ff = shape(model)
    k, ratio, scope, src = None, lcfg.ratio, lcfg.scope, None
    if loc.needs_source_mask:
        if not lcfg.source_mask:
            raise ConfigError(f"config key 'localize.source_mask': {lcfg.method} needs the path of a source mask "
                              f"(the mask it complements or whose size it copies)")
        src = Mask.load(lcfg.source_mask, expect_shape=(L, d_ff))
    if loc.size_from_source == "count":  # the source's size (docs/localizers.md#random-complement), per layer under scope=per_layer
        k, ratio = (src.count if scope == "global" else src.per_layer_counts()), src.ratio
    elif loc.size_from_source == "per_layer":  # the source's count in every layer
        k, ratio, scope = src.per_layer_counts(), src.ratio, "per_layer"
    else:
        _check_ratio(ratio)
    if loc.excludes_source:
        _check_complement(lcfg.source_mask, src, k, ratio, scope)
    s = score(lcfg.method, model, tokenizer, forget_rows, retain_rows, lcfg)
    if tuple(s.shape) != (L, d_ff):
        raise RuntimeError(f"{lcfg.method} returned scores {tuple(s.shape)}, expected {(L, d_ff)}")
    sel = select_topk(s, ratio, scope, k=k)
    meta = {"method": lcfg.method, "ratio": float(ratio), "scope": scope, "seed": int(lcfg.seed),
            "source_mask": lcfg.source_mask if loc.needs_source_mask else "",
            "fingerprint": fingerprint(model)}
    if loc.uses_reference and lcfg.reference:
        meta["reference"] = lcfg.reference  # ||v - v_ref||: which reference the scores were taken against
    return Mask(sel, meta)


def _check_complement(path: str, src: Mask, k, ratio: float, scope: str) -> None:
    """A pick disjoint from `src` must fit in its complement (globally, or in every layer)."""
    L, d_ff = src.mask.shape
    free = (~src.mask).sum(dim=1).tolist()
    if scope == "global":
        need = k if k is not None else topk_count(ratio, L * d_ff)
        if need > sum(free):
            raise MaskError(f"mask {path} selects {src.count} of {L * d_ff} value vectors; its complement "
                            f"({sum(free)}) is too small for a disjoint mask of {need}")
        return
    need = k if k is not None else [topk_count(ratio, d_ff)] * L
    if any(c > f for c, f in zip(need, free)):
        raise MaskError(f"mask {path}: some layer's complement is smaller than its count "
                        f"(counts {need}, free {free}); use localize.scope=global")


# Register the methods: every module of this package adds its own to LOCALIZERS.
for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["LOCALIZERS", "localize", "score", "select_topk", "topk_count"]
