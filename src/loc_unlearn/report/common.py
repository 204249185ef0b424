"""What every report module shares: the Table value, number formatting (3 decimals; MU95, a log10 FQ,
2), means and stds recomputed from the runs, and the paired test entry of a (method, metric) completed
from the runs (docs/statistics.md)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..config import REGIONS  # noqa: F401  (the controlled study's two masks; report modules import it here)

ALPHA = 0.05  # significance level of the headline
POWER_LABEL = "0.8"  # the power the MDD is computed at (evaluate.stats.POWER)
MU95_MARK = "†"  # MU never fell below 0.95 MU(theta_0): the last point's value stands in (docs/metrics.md#mu95)


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


def isnum(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt(x, nd: int = 3) -> str:
    return f"{x:.{nd}f}" if isnum(x) else "n/a"


def fmt_p(p, n=None) -> str:
    """A p-value; `n` = the number of pairs, so a single seed says why there is no test."""
    if n is not None and isinstance(n, int) and n < 2:
        return f"n/a ({n} seed{'s' if n != 1 else ''})"
    if not isnum(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def fmt_interval(lo, hi, nd: int = 3) -> str:
    return f"[{fmt(lo, nd)}, {fmt(hi, nd)}]" if isnum(lo) and isnum(hi) else "n/a"


def fmt_mdd(t: dict, nd: int = 3) -> str:
    """'0.034 (n=5, sd 0.021)': the minimum detectable difference with the n and sd it rests on (docs/statistics.md#minimum-detectable-difference-mdd)."""
    n = t.get("n")
    if not isinstance(n, int) or n < 2:
        return fmt_p(None, n) if isinstance(n, int) else "n/a"
    return f"{fmt(t.get('mdd'), nd)} (n={n}, sd {fmt(t.get('sd_diff'), nd)})"


def fmt_wilcoxon(t: dict) -> str:
    """The Wilcoxon p, and its floor when that floor is above the significance level (n < 6)."""
    p, n = t.get("p_wilcoxon", t.get("wilcoxon_p")), t.get("n")
    if isinstance(n, int) and n < 2:
        return fmt_p(p, n)
    lo = t.get("wilcoxon_min_p")
    return fmt_p(p) + (f" (min {fmt_p(lo)})" if isnum(lo) and lo >= ALPHA else "")


def only_uncorrected(t: dict) -> bool:
    """p < ALPHA before Holm's correction and not after it (docs/statistics.md#multiple-comparisons)."""
    return isnum(t.get("p_t")) and isnum(t.get("p_holm")) and t["p_t"] < ALPHA <= t["p_holm"]


UNCORRECTED = f"p < {ALPHA} uncorrected, not after Holm"


def holm_m(res: dict):
    """The size of the headline's Holm family (`holm_m` of the study's tests), None for a results.json without it."""
    return next((t["holm_m"] for t in res.get("tests") or [] if isinstance(t.get("holm_m"), int)), None)


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1, like the study's tests entries); std 0 for one value."""
    a = np.asarray([x for x in xs if isnum(x)], dtype=float)
    if len(a) == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def fmt_ms(xs: list[float], nd: int = 3) -> str:
    m, s = mean_std(xs)
    return f"{fmt(m, nd)} ± {fmt(s, nd)}" if len(xs) > 1 else fmt(m, nd)


def methods_of(runs: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in runs))  # first-seen order = the study's order


def by_seed(runs: list[dict], method: str, region: str, key: str) -> dict[int, float]:
    return {r["seed"]: r[key] for r in runs if r["method"] == method and r["region"] == region}


def paired(res: dict, method: str, metric: str) -> dict:
    """The study's test entry for (method, metric), completed from the runs: keys the entry lacks (t
    interval, MDD, sd, censoring counts of older studies) come from `evaluate.stats.compare_groups` over
    the seeds both regions have; the entry's own values win. {} when no seed has both regions."""
    from ..evaluate.stats import compare_groups

    stored = next((t for t in res.get("tests") or [] if t.get("method") == method and t.get("metric") == metric), {})
    fresh = compare_groups(res["runs"], method, metric)
    if not fresh.get("n") and not stored:
        return {}
    out = {**fresh, **stored}
    if "p_wilcoxon" not in out and "wilcoxon_p" in out:
        out["p_wilcoxon"] = out["wilcoxon_p"]
    notes = list(stored.get("notes") or [])
    notes += [n for n in fresh.get("notes") or [] if n not in notes and (not stored or "censored" in n)]
    out["notes"] = notes
    return out


CI_HEADER = "95% CI of diff (t)"
BOOT_HEADER = "bootstrap percentile interval"
MDD_HEADER = "MDD (n, sd of diffs)"
