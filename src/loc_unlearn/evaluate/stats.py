"""Paired comparisons across seeds (docs/statistics.md#pairing) and their sensitivity (docs/statistics.md#minimum-detectable-difference-mdd).

`paired_tests(a, b)` compares a[i] with b[i] (same seed), diff = a - b:

- paired t-test (`p_t`) and the t interval of the mean difference (`t_ci_low`, `t_ci_high`, n-1 df);
- Wilcoxon signed-rank (`wilcoxon_p`) and the smallest p it can reach with these n (`wilcoxon_min_p`):
  two-sided exact p >= 2 / 2^n, so with n < 6 pairs it can never be below 0.05;
- a seeded percentile bootstrap interval of the mean difference (`ci_low`, `ci_high`, docs/statistics.md#bootstrap-interval);
- the minimum detectable difference (`mdd`, docs/statistics.md#minimum-detectable-difference-mdd) with `n` and `sd_diff` beside it.

`holm(pvalues)` adjusts a family of p-values (docs/statistics.md#multiple-comparisons); `with_holm(tests)` adds
them to a list of test entries. `ks_min_log10_p(n)` is the lowest log10 p a two-sample KS test can give with
n values per side: the floor of log10 FQ at a forget set of n rows (docs/metrics.md#fq-ceiling).

Which interval to read: the t interval. The bootstrap keeps its keys for the study design (docs/studies.md#step-4-comparison) and older results, but
a percentile bootstrap over n seeds only ever sees the n observed differences: with n <= 3 its 2.5% /
97.5% quantiles are exactly the smallest / largest difference (an all-min resample has probability
1/n^n >= 1/27 > 2.5%), and for n <= 5 it is close to [min, max] and narrower than a 95% interval,
because it ignores the uncertainty in the sd that the t quantile pays for. `ci_kind` names it.

Degenerate inputs (few seeds, identical values) give p = nan / 1.0 with a note instead of an
exception, because a study with 3 seeds must still produce its table.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import optimize, stats

from ..errors import UserError

ALPHA = 0.05
POWER = 0.8
BOOT_KIND = "percentile bootstrap"


def bootstrap_ci(diff, n_boot: int = 10000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `diff` (resampling seeds with replacement)."""
    d = np.asarray(diff, dtype=float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def t_interval(diff, level: float = 0.95) -> tuple[float, float]:
    """mean ± t_{(1+level)/2, n-1} sd / sqrt(n) of `diff`; (nan, nan) below 2 values."""
    d = np.asarray(diff, dtype=float)
    n = len(d)
    if n < 2:
        return float("nan"), float("nan")
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * float(d.std(ddof=1)) / math.sqrt(n)
    return float(d.mean() - half), float(d.mean() + half)


def _two_sided_power(crit: float, df: int, lam: float) -> float:
    # P(T > crit) + P(T < -crit), T ~ nct(df, lam); the lower tail as P(T > crit | -lam) (symmetry),
    # because scipy's nct.cdf far in the left tail returns nan for large lam (it is ~0 there).
    up, low = float(stats.nct.sf(crit, df, lam)), float(stats.nct.sf(crit, df, -lam))
    return (up if math.isfinite(up) else 1.0) + (low if math.isfinite(low) else 0.0)


def paired_t_power(delta: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test at `alpha` when the true mean difference is `delta` and the
    per-seed differences have sd `sd`: P(|T| > t_crit) with T ~ noncentral t(n-1, delta sqrt(n) / sd)."""
    df = n - 1
    crit = float(stats.t.ppf(1 - alpha / 2, df))
    return _two_sided_power(crit, df, delta * math.sqrt(n) / sd)


def min_detectable_difference(sd, n, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable difference of a paired comparison (docs/statistics.md#minimum-detectable-difference-mdd).

    The smallest true mean difference that a two-sided paired t-test at `alpha` (`scipy.stats.ttest_rel`
    over `n` pairs) detects with probability `power`, when the per-pair differences have standard
    deviation `sd` (give the observed sample sd, ddof=1). Solved exactly with the noncentral t
    distribution: power(lam) = P(T > t_crit) + P(T < -t_crit), T ~ nct(n-1, lam), lam = MDD sqrt(n) / sd,
    root found with brentq. For large n it tends to (z_{1-alpha/2} + z_power) sd / sqrt(n).

    Edge cases, on purpose not exceptions (a study table must still be written):
    - n < 2: nan (a t-test needs two pairs; the caller says so in its notes);
    - sd nan / inf: nan;
    - sd == 0: 0.0, the limit sd -> 0: with no spread every nonzero difference is detected (the t-test
      itself is undefined there; `paired_tests` notes that separately).
    """
    if not (0 < alpha < 1) or not (0 < power < 1):
        raise ValueError(f"min_detectable_difference: alpha and power must lie in (0, 1), got {alpha}, {power}")
    if isinstance(n, bool) or int(n) != n:
        raise ValueError(f"min_detectable_difference: n must be an integer, got {n!r}")
    n = int(n)
    sd = float(sd)
    if sd < 0:
        raise ValueError(f"min_detectable_difference: sd must be >= 0, got {sd}")
    if n < 2 or not math.isfinite(sd):
        return float("nan")
    if sd == 0:
        return 0.0
    df = n - 1
    crit = float(stats.t.ppf(1 - alpha / 2, df))

    def gap(lam: float) -> float:
        return _two_sided_power(crit, df, lam) - power

    if gap(0.0) >= 0:  # power <= alpha: a zero difference is already "detected" that often
        return 0.0
    hi = crit + float(stats.norm.ppf(power)) + 1.0
    while gap(hi) < 0:
        hi *= 2
        if hi > 1e9:  # cannot happen for 0 < power < 1; guards an endless loop on a scipy failure
            return float("nan")
    lam = optimize.brentq(gap, 0.0, hi, xtol=1e-12, rtol=1e-12, maxiter=500)
    return float(lam * sd / math.sqrt(n))


def wilcoxon_min_p(n_nonzero: int) -> float:
    """Smallest two-sided p the exact Wilcoxon signed-rank test can give with `n_nonzero` nonzero
    differences (all of one sign): 2 / 2^n, capped at 1. n=3: 0.25; n=5: 0.0625; n=6: 0.031."""
    return float(min(1.0, 2.0 / 2 ** int(n_nonzero)))


def _wilcoxon(a: np.ndarray, b: np.ndarray, alpha: float, notes: list) -> dict:
    """The exact Wilcoxon signed-rank test of a vs b with its attainable floor; caveats go to `notes`."""
    d = a - b
    n_nonzero = int(np.count_nonzero(d))
    min_p = wilcoxon_min_p(n_nonzero)
    if n_nonzero == 0:
        notes.append("Wilcoxon: all differences are zero (p=1)")
        return {"wilcoxon_stat": float("nan"), "wilcoxon_p": 1.0, "wilcoxon_min_p": min_p}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about small n; we say it in notes
        r = stats.wilcoxon(a, b)
    if min_p >= alpha:
        notes.append(f"Wilcoxon with n={n_nonzero} nonzero pairs cannot reach p < {alpha:g} "
                     f"(exact minimum p = {min_p:.3g})")
    return {"wilcoxon_stat": float(r.statistic), "wilcoxon_p": float(r.pvalue), "wilcoxon_min_p": min_p}


def _count_censored(flags, n: int) -> int:
    if flags is None:
        return 0
    if len(flags) != n:
        raise UserError(f"paired_tests: censoring flags need one entry per pair ({n}), got {len(flags)}")
    return int(sum(bool(f) for f in flags))


def paired_tests(a, b, n_boot: int = 10000, seed: int = 0, censored_a: Sequence[bool] | None = None,
                 censored_b: Sequence[bool] | None = None, alpha: float = ALPHA, power: float = POWER) -> dict:
    """Paired comparison of a[i] with b[i]; diff = a - b. Returns a dict:

    n, mean_diff, sd_diff (ddof=1; nan below 2 pairs), t, p_t, t_ci_low, t_ci_high (95% t interval of
    the mean difference: the interval to read), wilcoxon_stat, wilcoxon_p, wilcoxon_min_p, ci_low,
    ci_high, ci_kind (the seeded percentile bootstrap of docs/statistics.md#bootstrap-interval; see the module docstring for why it
    is not a 95% interval at n <= 5), mdd (docs/statistics.md#minimum-detectable-difference-mdd at `alpha`, `power`), alpha, power, n_censored
    ([count in a, count in b]: values flagged in `censored_a` / `censored_b`, e.g. MU95 not_reached,
    docs/metrics.md#mu95) and notes (every caveat in words: degenerate t, Wilcoxon floor, bootstrap at tiny n,
    censored values mixed into the tests).
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise UserError(f"paired_tests: need two 1-D lists of equal length (got shapes {a.shape} and {b.shape})")
    if len(a) == 0 or np.isnan(a).any() or np.isnan(b).any():
        raise UserError(f"paired_tests: need non-empty lists without NaN (got {a.tolist()} and {b.tolist()})")
    d = a - b
    n = len(d)
    notes = []
    sd = float(d.std(ddof=1)) if n > 1 else float("nan")
    out = {"n": n, "mean_diff": float(d.mean()), "sd_diff": sd}

    constant = n >= 2 and np.ptp(d) <= 1e-12 * max(1.0, np.abs(d).max())
    if n < 2:
        t, p_t = float("nan"), float("nan")
        notes.append("t-test needs at least 2 pairs")
    elif constant:
        # Constant differences (up to float rounding): zero variance, t is undefined and scipy
        # would return nan or a huge t from rounding noise.
        zero = np.all(d == 0)
        t, p_t = float("nan"), (1.0 if zero else float("nan"))
        notes.append("all differences are equal: t-test undefined" + (" (all zero: p=1)" if zero else ""))
    else:
        r = stats.ttest_rel(a, b)
        t, p_t = float(r.statistic), float(r.pvalue)
    lo_t, hi_t = t_interval(d)
    if constant:  # rounding noise is not spread: sd 0, the interval is the point
        sd = 0.0
        lo_t = hi_t = float(d.mean())
    out.update(sd_diff=sd, t=t, p_t=p_t, t_ci_low=lo_t, t_ci_high=hi_t)

    out.update(_wilcoxon(a, b, alpha, notes))

    lo, hi = bootstrap_ci(d, n_boot=n_boot, seed=seed)
    if n < 3:
        notes.append(f"bootstrap CI from n={n} pairs is not meaningful")
    elif n <= 5:
        what = "exactly [min, max] of the differences" if n == 3 else "close to [min, max] of the differences"
        notes.append(f"bootstrap percentile interval from n={n} pairs is {what}, not a 95% CI; read the t interval")
    out.update(ci_low=lo, ci_high=hi, ci_kind=f"{BOOT_KIND} ({n_boot} resamples)")

    mdd = min_detectable_difference(sd, n, alpha, power) if n >= 2 else float("nan")
    if n < 2:
        notes.append("minimum detectable difference needs at least 2 pairs")
    out.update(mdd=mdd, alpha=alpha, power=power)

    cens = [_count_censored(flags, n) for flags in (censored_a, censored_b)]
    out["n_censored"] = cens
    if any(cens):
        notes.append(f"censored values (a: {cens[0]}/{n}, b: {cens[1]}/{n}) enter the tests as if observed")
    out["notes"] = notes
    return out


def compare_groups(runs: list[dict], method: str, metric: str, groups: tuple[str, str] = ("oracle", "random"),
                   key: str = "region", **kw) -> dict:
    """Paired test of `metric` between two groups of runs of one unlearning method, matched by seed.

    `runs`: dicts with `method`, `seed`, `key` (e.g. region) and `metric`; a boolean
    `<metric>_not_reached` marks a censored value (MU95, docs/statistics.md#censoring). Only seeds present (with a finite
    value) in both groups are paired. Returns `paired_tests(...)` plus method, metric, p_wilcoxon,
    `<group>_mean`, `<group>_std` (ddof=1; nan for one seed), seeds, and n_censored as
    `{group: count}` over the paired seeds. No common seed: n = 0 with a note instead of tests.
    """
    flag = f"{metric}_not_reached"
    by = {g: {r["seed"]: r for r in runs if r.get("method") == method and r.get(key) == g} for g in groups}

    def ok(r):
        v = r.get(metric)
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    seeds = sorted(s for s in set(by[groups[0]]) & set(by[groups[1]]) if ok(by[groups[0]][s]) and ok(by[groups[1]][s]))
    out = {"method": method, "metric": metric, "seeds": seeds}
    if not seeds:
        return out | {"n": 0, "n_censored": {g: 0 for g in groups},
                      "notes": [f"no seed has a {metric} value for both {groups[0]} and {groups[1]}"]}
    vals = [[float(by[g][s][metric]) for s in seeds] for g in groups]
    cens = [[bool(by[g][s].get(flag)) for s in seeds] for g in groups]
    t = paired_tests(vals[0], vals[1], censored_a=cens[0], censored_b=cens[1], **kw)
    notes = [nt for nt in t["notes"] if not nt.startswith("censored values")]
    nc = dict(zip(groups, t["n_censored"]))
    if any(nc.values()):
        notes.append(f"{method} {metric} is censored ({flag}) for " + ", ".join(f"{g} {c}/{len(seeds)}" for g, c in nc.items())
                     + " seed(s): the last point's value stands in, and the tests treat it as observed")
    out.update(t, notes=notes, n_censored=nc, p_wilcoxon=t["wilcoxon_p"])
    for g, v in zip(groups, vals):
        out[f"{g}_mean"] = float(np.mean(v))
        out[f"{g}_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")
    return out


def holm(pvalues) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in input order (docs/statistics.md#multiple-comparisons).

    With the m finite p-values sorted, p_(1) <= ... <= p_(m): adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)),
    so adjusted values never decrease with p and never exceed 1, and tied p-values get the same adjusted value.
    A NaN (or None) p stays NaN and does not count in m: a test that could not be made (one seed, identical
    values) is not a test the family pays for.
    """
    p = [float("nan") if x is None else float(x) for x in pvalues]
    if any(not (0.0 <= x <= 1.0) for x in p if not math.isnan(x)):
        raise ValueError(f"holm: p-values must lie in [0, 1], got {p}")
    order = sorted((i for i, x in enumerate(p) if not math.isnan(x)), key=lambda i: p[i])
    m = len(order)
    out = [float("nan")] * len(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))  # the max keeps the step-down monotone
        out[i] = running
    return out


def with_holm(tests: list[dict], key: str = "p_t") -> list[dict]:
    """`tests` (one family) with `p_holm` = holm() over their `key` p-values and `holm_m` = the family size
    (tests with a finite p). An entry without `key` (no seed to pair) counts as NaN."""
    adjusted = holm([t.get(key) for t in tests])
    m = sum(not math.isnan(a) for a in adjusted)
    return [t | {"p_holm": a, "holm_m": m} for t, a in zip(tests, adjusted)]


def ks_min_log10_p(n: int, m: int | None = None) -> float:
    """log10 of the smallest two-sided p-value the exact two-sample Kolmogorov-Smirnov test can give with `n`
    and `m` (default `n`) values (docs/metrics.md#fq-ceiling).

    Under the null every one of the C(n+m, n) orderings of the pooled values is equally likely; the largest
    statistic, D = 1, occurs only when the two samples are completely separated, in one of 2 orderings, so
    p_min = 2 / C(n+m, n) (1 when n = m = 1). Computed in logs, because at TOFU's 400 rows it is about 1e-240.
    """
    m = n if m is None else m
    if int(n) != n or int(m) != m or n < 1 or m < 1:
        raise ValueError(f"ks_min_log10_p: need positive integer sample sizes, got {n!r}, {m!r}")
    log_binom = math.lgamma(n + m + 1) - math.lgamma(n + 1) - math.lgamma(m + 1)
    return min(0.0, (math.log(2.0) - log_binom) / math.log(10.0))
