"""Trade-off summaries of an unlearning trajectory: AUES, MU95, model mixing (docs/metrics.md).

A trajectory is a list of points (dicts with FS, RS, MU, log10_FQ), theta_0 first. Pure math on
floats; the expensive part (evaluating each point) lives in tofu.py.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import UserError


def pareto_envelope(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Non-dominated (FS, RS) points, both higher-is-better, sorted by FS (docs/metrics.md#aues).

    A point is dropped if another is at least as good in both and better in one; exact
    duplicates dominate nobody, so one copy of each is kept.
    """
    uniq = sorted(set((float(f), float(r)) for f, r in points))
    keep = []
    for f, r in uniq:
        dominated = any(f2 >= f and r2 >= r and (f2 > f or r2 > r) for f2, r2 in uniq)
        if not dominated:
            keep.append((f, r))
    return keep


def aues(fs, rs, envelope: bool = True, left_anchor: bool = True) -> float:
    """Area under the RS-vs-FS curve (docs/metrics.md#aues): envelope, sort by FS, prepend (0, RS_first), trapezoid."""
    if len(fs) != len(rs):
        raise UserError(f"aues: fs and rs have different lengths ({len(fs)} vs {len(rs)})")
    if len(fs) == 0:
        raise UserError("aues: empty trajectory (need at least one (FS, RS) point)")
    pts = list(zip(map(float, fs), map(float, rs)))
    if any(math.isnan(f) or math.isnan(r) for f, r in pts):
        raise UserError(f"aues: NaN in trajectory points {pts}")
    # Ties in FS: order by RS so the curve is deterministic (zero-width segments add no area anyway).
    pts = pareto_envelope(pts) if envelope else sorted(pts)
    if left_anchor:
        pts = [(0.0, pts[0][1])] + pts
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def mu95(mu, log_fq, mu0: float | None = None, mode: str = "first") -> tuple[float, bool]:
    """log10 FQ where MU first falls below 0.95*MU0, interpolated in (MU, log10 FQ) (docs/metrics.md#mu95).

    Returns (value, not_reached). mode="first": if MU never falls below the threshold, the last
    point's value with not_reached=True. mode="best": max log10 FQ over points with
    MU >= 0.95*MU0 (not_reached says whether MU ever fell below). `mu0` defaults to mu[0].
    """
    if len(mu) != len(log_fq) or len(mu) == 0:
        raise UserError(f"mu95: need equally long, non-empty MU and log10 FQ lists (got {len(mu)} and {len(log_fq)})")
    mu = [float(m) for m in mu]
    lf = [float(v) for v in log_fq]
    mu0 = mu[0] if mu0 is None else float(mu0)
    thr = 0.95 * mu0
    below = [j for j, m in enumerate(mu) if m < thr]
    if mode == "best":
        ok = [v for m, v in zip(mu, lf) if m >= thr]
        return (max(ok) if ok else float("nan")), not below
    if mode != "first":
        raise UserError(f"mu95: unknown mode {mode!r}; known modes: first, best (config key eval.mu95)")
    if not below:
        return lf[-1], True
    j = below[0]
    if j == 0:  # theta_0 itself is below (mu0 given separately): nothing to interpolate from
        return lf[0], False
    m1, m2, v1, v2 = mu[j - 1], mu[j], lf[j - 1], lf[j]
    t = (m1 - thr) / (m1 - m2)  # m1 >= thr > m2, so 0 <= t < 1
    return v1 + t * (v2 - v1), False


def summarize_trajectory(points: list[dict], envelope: bool = True, left_anchor: bool = True,
                         mode: str = "first") -> dict:
    """AUES and MU95 of a trajectory; points are dicts with FS, RS, MU, log10_FQ (theta_0 first).

    `mode` is the MU95 mode (first | best). AUES uses every point. A point evaluated for ES alone
    (`es_only`, eval.full_at=ends) has MU None: MU95 then uses the points that have MU, and `mu95_note`
    says which (empty when all have it). MU95 is None when a point it uses lacks log10_FQ (no reference
    model for Forget Quality).
    """
    for i, p in enumerate(points):
        need = ("FS", "RS") if p.get("es_only") else ("FS", "RS", "MU")
        for key in need:
            if key not in p or p[key] is None:
                raise UserError(f"trajectory point {i}: missing {key!r} (have {sorted(p)})")
    full = [p for p in points if not p.get("es_only")]
    if points and full and full[0] is not points[0]:
        raise UserError("trajectory point 0 (theta_0) needs the full evaluation (MU): MU95 is relative to MU(theta_0)")
    out = {"aues": aues([p["FS"] for p in points], [p["RS"] for p in points], envelope, left_anchor),
           "mu95": None, "mu95_not_reached": None, "mu95_note": "", "points": points}
    if len(full) < len(points):
        out["mu95_note"] = (f"MU95 from the {len(full)} of {len(points)} points with MU (steps "
                            f"{', '.join(str(p['step']) for p in full)}); the others have FS/RS only (eval.full_at=ends)")
    if full and all(p.get("log10_FQ") is not None for p in full):
        v, nr = mu95([p["MU"] for p in full], [p["log10_FQ"] for p in full], mode=mode)
        out["mu95"], out["mu95_not_reached"] = v, nr
    return out


def mix_state_dicts(sd0: dict, sdK: dict, a: float) -> dict:
    """theta(a) = (1-a) theta_0 + a theta_K (docs/metrics.md#mix-curve).

    Mixed in float32 and cast back, so bf16 weights are not rounded twice. Non-float tensors
    (integer buffers) are taken from theta_K.
    """
    if set(sd0) != set(sdK):
        diff = sorted(set(sd0) ^ set(sdK))[:5]
        raise UserError(f"mix_state_dicts: the two state dicts have different keys (e.g. {diff})")
    out = {}
    for k, w0 in sd0.items():
        wK = sdK[k]
        if w0.shape != wK.shape:
            raise UserError(f"mix_state_dicts: tensor {k!r} has shape {tuple(w0.shape)} vs {tuple(wK.shape)}")
        if torch.is_floating_point(w0):
            out[k] = ((1.0 - a) * w0.float() + a * wK.float()).to(w0.dtype)
        else:
            out[k] = wK.clone()
    return out
