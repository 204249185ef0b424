"""Paired comparisons across seeds (SPEC §7 step 4): Oracle vs Random AUES / MU95.

`paired_tests(a, b)` compares a[i] with b[i] (same seed): paired t-test, Wilcoxon signed-rank, and
a seeded bootstrap 95% CI of the mean difference a - b. Degenerate inputs (few seeds, identical
values) give p = nan / 1.0 with a note instead of an exception, because a study with 3 seeds
must still produce its table.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

from ..errors import UserError


def bootstrap_ci(diff, n_boot: int = 10000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `diff` (resampling seeds with replacement)."""
    d = np.asarray(diff, dtype=float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_tests(a, b, n_boot: int = 10000, seed: int = 0) -> dict:
    """dict(n, t, p_t, wilcoxon_stat, wilcoxon_p, mean_diff, ci_low, ci_high, notes); diff = a - b."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise UserError(f"paired_tests: need two 1-D lists of equal length (got shapes {a.shape} and {b.shape})")
    if len(a) == 0 or np.isnan(a).any() or np.isnan(b).any():
        raise UserError(f"paired_tests: need non-empty lists without NaN (got {a.tolist()} and {b.tolist()})")
    d = a - b
    n = len(d)
    notes = []
    out = {"n": n, "mean_diff": float(d.mean())}

    if n < 2:
        t, p_t = float("nan"), float("nan")
        notes.append("t-test needs at least 2 pairs")
    elif np.ptp(d) <= 1e-12 * max(1.0, np.abs(d).max()):
        # Constant differences (up to float rounding): zero variance, t is undefined and scipy
        # would return nan or a huge t from rounding noise.
        zero = np.all(d == 0)
        t, p_t = float("nan"), (1.0 if zero else float("nan"))
        notes.append("all differences are equal: t-test undefined" + (" (all zero: p=1)" if zero else ""))
    else:
        r = stats.ttest_rel(a, b)
        t, p_t = float(r.statistic), float(r.pvalue)
    out.update(t=t, p_t=p_t)

    if np.all(d == 0):
        w, p_w = float("nan"), 1.0
        notes.append("Wilcoxon: all differences are zero (p=1)")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns about small n; we say it in notes
            r = stats.wilcoxon(a, b)
        w, p_w = float(r.statistic), float(r.pvalue)
        if n < 6:
            notes.append(f"Wilcoxon with n={n} < 6 pairs cannot reach p < 0.05 (exact minimum p = {2 / 2 ** n:.3g})")
    out.update(wilcoxon_stat=w, wilcoxon_p=p_w)

    lo, hi = bootstrap_ci(d, n_boot=n_boot, seed=seed)
    if n < 3:
        notes.append(f"bootstrap CI from n={n} pairs is not meaningful")
    out.update(ci_low=lo, ci_high=hi, notes=notes)
    return out
