"""paired_tests against scipy directly and against a hand-rolled bootstrap."""
import math

import numpy as np
import pytest
from scipy import stats

from loc_unlearn.errors import UserError
from loc_unlearn.evaluate.stats import paired_tests


def test_matches_scipy_and_bootstrap():
    a = [0.593, 0.610, 0.571, 0.602, 0.588, 0.597]
    b = [0.586, 0.601, 0.580, 0.590, 0.583, 0.592]
    r = paired_tests(a, b, n_boot=2000, seed=3)
    ref = stats.ttest_rel(a, b)
    assert r["t"] == pytest.approx(ref.statistic) and r["p_t"] == pytest.approx(ref.pvalue)
    assert r["wilcoxon_p"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
    d = np.array(a) - np.array(b)
    assert r["mean_diff"] == pytest.approx(d.mean())
    # independent bootstrap: loop version with the same generator draws
    rng = np.random.default_rng(3)
    idx = rng.integers(0, len(d), size=(2000, len(d)))
    means = [d[row].mean() for row in idx]
    assert r["ci_low"] == pytest.approx(np.percentile(means, 2.5))
    assert r["ci_high"] == pytest.approx(np.percentile(means, 97.5))
    assert r["ci_low"] <= r["mean_diff"] <= r["ci_high"]
    # seeded: same numbers again
    assert paired_tests(a, b, n_boot=2000, seed=3) == r


def test_degenerate_inputs_do_not_crash():
    r = paired_tests([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert r["wilcoxon_p"] == 1.0 and r["p_t"] == 1.0 and r["notes"]
    r = paired_tests([0.6, 0.7, 0.8], [0.5, 0.6, 0.7])  # constant non-zero difference
    assert math.isnan(r["t"]) and r["mean_diff"] == pytest.approx(0.1)
    r = paired_tests([0.61, 0.72, 0.55], [0.5, 0.6, 0.7])  # n=3 < 6
    assert r["wilcoxon_p"] >= 0.25 and any("n=3" in n for n in r["notes"])
    assert r["p_t"] == pytest.approx(stats.ttest_rel([0.61, 0.72, 0.55], [0.5, 0.6, 0.7]).pvalue)
    r = paired_tests([0.6], [0.5])
    assert math.isnan(r["p_t"])
    with pytest.raises(UserError):
        paired_tests([0.1, 0.2], [0.1])


# ----------------------------------------------------------------------------- t interval, Wilcoxon floor, MDD

from loc_unlearn.evaluate.stats import compare_groups, min_detectable_difference, paired_t_power, wilcoxon_min_p  # noqa: E402


def test_t_interval_sd_and_mdd_fields():
    a = [0.593, 0.610, 0.571, 0.602, 0.588]
    b = [0.586, 0.601, 0.580, 0.590, 0.583]
    r = paired_tests(a, b)
    d = np.subtract(a, b)
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)  # scipy's own interval, not our formula
    assert (r["t_ci_low"], r["t_ci_high"]) == pytest.approx((ci.low, ci.high))
    assert r["sd_diff"] == pytest.approx(d.std(ddof=1)) and r["n"] == 5
    assert r["mdd"] == pytest.approx(min_detectable_difference(d.std(ddof=1), 5))
    assert r["ci_kind"].startswith("percentile bootstrap")
    # the t interval is wider than the percentile bootstrap at small n (which ignores the sd's uncertainty)
    assert r["t_ci_high"] - r["t_ci_low"] > r["ci_high"] - r["ci_low"]


def test_bootstrap_at_three_seeds_is_min_max_and_says_so():
    r = paired_tests([0.61, 0.72, 0.55], [0.5, 0.6, 0.7])
    d = np.subtract([0.61, 0.72, 0.55], [0.5, 0.6, 0.7])
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((d.min(), d.max()))
    assert any("exactly [min, max]" in n for n in r["notes"])


@pytest.mark.parametrize("n", [3, 4, 5, 6, 8])
def test_wilcoxon_min_p_is_the_exact_floor(n):
    # all differences of one sign, distinct: the most extreme outcome the exact test can see
    assert wilcoxon_min_p(n) == pytest.approx(stats.wilcoxon(np.arange(1, n + 1) / 10).pvalue)
    r = paired_tests(list(np.arange(1, n + 1) / 10), [0.0] * n)
    assert r["wilcoxon_min_p"] == pytest.approx(2 / 2 ** n) and r["wilcoxon_p"] >= r["wilcoxon_min_p"] - 1e-12
    assert any("cannot reach" in x for x in r["notes"]) == (n < 6)
    assert wilcoxon_min_p(3) == 0.25


@pytest.mark.parametrize("n", [2, 3, 5])
def test_mdd_gives_the_stated_power_by_simulation(n):
    """Independent of the noncentral t: simulate paired t-tests (scipy's ttest_1samp on the differences)
    at a true difference of exactly the MDD; about 80% must reject at 0.05."""
    sd = 0.02
    mdd = min_detectable_difference(sd, n)
    rng = np.random.default_rng(11)
    d = rng.normal(mdd, sd, size=(60000, n))
    rejected = stats.ttest_1samp(d, 0.0, axis=1).pvalue < 0.05
    assert rejected.mean() == pytest.approx(0.8, abs=0.01)  # binomial sd 0.0016
    # and 80% is specific to the MDD: half of it has clearly less power
    low = stats.ttest_1samp(rng.normal(mdd / 2, sd, size=(20000, n)), 0.0, axis=1).pvalue < 0.05
    assert low.mean() < 0.6


def test_mdd_large_n_matches_normal_approximation():
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    for n in (5000, 100000):
        assert min_detectable_difference(0.3, n) == pytest.approx(z * 0.3 / np.sqrt(n), rel=2e-3)
    # at small n the t-test needs more than the normal approximation says, and less with more seeds
    mdds = [min_detectable_difference(1.0, n) for n in (2, 3, 5, 10, 30)]
    assert all(m > z / np.sqrt(n) for m, n in zip(mdds, (2, 3, 5, 10, 30)))
    assert mdds == sorted(mdds, reverse=True)
    assert min_detectable_difference(2.0, 5) == pytest.approx(2 * min_detectable_difference(1.0, 5))
    assert paired_t_power(min_detectable_difference(1.0, 7, power=0.9), 1.0, 7) == pytest.approx(0.9)


def test_mdd_edge_cases():
    assert math.isnan(min_detectable_difference(0.1, 1))
    assert math.isnan(min_detectable_difference(float("nan"), 5))
    assert min_detectable_difference(0.0, 5) == 0.0  # no spread: every nonzero difference is detected
    with pytest.raises(ValueError):
        min_detectable_difference(-0.1, 5)
    with pytest.raises(ValueError):
        min_detectable_difference(0.1, 5, power=1.0)
    r = paired_tests([0.6], [0.5])
    assert math.isnan(r["mdd"]) and math.isnan(r["sd_diff"]) and math.isnan(r["t_ci_low"])
    assert any("minimum detectable" in x for x in r["notes"])
    r = paired_tests([0.6, 0.7, 0.8], [0.5, 0.6, 0.7])  # constant difference: sd 0
    assert r["sd_diff"] == 0.0 and r["mdd"] == 0.0 and r["t_ci_low"] == r["t_ci_high"] == pytest.approx(0.1)


# ----------------------------------------------------------------------------- censoring (MU95 not_reached)


def _runs(values, flags):
    return [{"method": "npo", "region": reg, "seed": s, "mu95": v, "mu95_not_reached": f}
            for reg in ("oracle", "random") for s, (v, f) in enumerate(zip(values[reg], flags[reg]))]


def test_censored_values_are_counted_and_noted():
    vals = {"oracle": [-3.0, -4.0, -2.5], "random": [-3.5, -3.9, -2.0]}
    runs = _runs(vals, {"oracle": [False, True, False], "random": [True, True, False]})
    r = compare_groups(runs, "npo", "mu95")
    assert r["n_censored"] == {"oracle": 1, "random": 2} and r["n"] == 3 and r["seeds"] == [0, 1, 2]
    assert any("censored" in n and "oracle 1/3" in n and "random 2/3" in n for n in r["notes"])
    assert r["p_t"] == pytest.approx(stats.ttest_rel(vals["oracle"], vals["random"]).pvalue)
    assert r["oracle_mean"] == pytest.approx(np.mean(vals["oracle"])) and r["p_wilcoxon"] == r["wilcoxon_p"]
    clean = compare_groups(_runs(vals, {"oracle": [False] * 3, "random": [False] * 3}), "npo", "mu95")
    assert clean["n_censored"] == {"oracle": 0, "random": 0} and not any("censored" in n for n in clean["notes"])
    # paired_tests itself: flags per pair
    t = paired_tests([1.0, 2.0, 3.5], [1.5, 2.2, 3.0], censored_a=[True, False, False])
    assert t["n_censored"] == [1, 0]
    with pytest.raises(UserError):
        paired_tests([1.0, 2.0], [1.5, 2.2], censored_b=[True])


def test_compare_groups_pairs_only_common_seeds():
    runs = _runs({"oracle": [0.5, 0.6, 0.7], "random": [0.4, 0.65]}, {"oracle": [False] * 3, "random": [False] * 2})
    r = compare_groups(runs, "npo", "mu95")
    assert r["seeds"] == [0, 1] and r["n"] == 2
    one = compare_groups(runs[:1] + runs[3:4], "npo", "mu95")
    assert one["n"] == 1 and math.isnan(one["oracle_std"]) and math.isnan(one["p_t"])
    none = compare_groups(runs, "wga", "mu95")
    assert none["n"] == 0 and none["notes"]


# ----------------------------------------------------------------------------- Holm, KS floor (issue 22)

from loc_unlearn.evaluate.stats import holm, ks_min_log10_p, with_holm  # noqa: E402


def test_holm_against_a_hand_computation():
    # m = 4 finite p-values; sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04, and the
    # running max lifts the last to 0.06 (monotone); the NaN stays NaN and is not counted.
    got = holm([0.01, 0.04, 0.03, 0.005, float("nan")])
    assert got[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and math.isnan(got[4])
    # ties get the same adjusted value (whatever their order): 0.02 x3 = 0.06 twice, then 0.5 x1
    assert holm([0.02, 0.02, 0.5]) == pytest.approx([0.06, 0.06, 0.5])
    assert holm([0.5, 0.02, 0.02]) == pytest.approx([0.5, 0.06, 0.06])
    # capped at 1: 0.6 x2 = 1.2 -> 1, 0.7 x1 = 0.7 -> max(1, 0.7) = 1
    assert holm([0.6, 0.7]) == [1.0, 1.0]
    # one test: unchanged; None counts as NaN; all NaN / empty: nothing to correct
    assert holm([0.03]) == [0.03]
    assert holm([None, 0.01, 0.04])[1:] == pytest.approx([0.02, 0.04]) and math.isnan(holm([None])[0])
    assert holm([]) == []
    with pytest.raises(ValueError):
        holm([0.5, 1.5])


def test_holm_is_monotone_and_never_below_p():
    rng = np.random.default_rng(5)
    p = list(rng.uniform(0, 0.2, 12))
    adj = holm(p)
    order = np.argsort(p)
    assert all(adj[i] <= adj[j] for i, j in zip(order, order[1:]))
    assert all(p_ <= a <= 1 for p_, a in zip(p, adj))
    assert min(adj) == pytest.approx(12 * min(p))  # the smallest pays the full Bonferroni factor


def test_with_holm_counts_the_family_without_untested_entries():
    tests = [{"method": "npo", "p_t": 0.01}, {"method": "wga", "p_t": float("nan")}, {"method": "rmu"},
             {"method": "dpo", "p_t": 0.04}]
    out = with_holm(tests)
    assert [t["holm_m"] for t in out] == [2, 2, 2, 2]
    assert out[0]["p_holm"] == pytest.approx(0.02) and out[3]["p_holm"] == pytest.approx(0.04)
    assert math.isnan(out[1]["p_holm"]) and math.isnan(out[2]["p_holm"])
    assert tests[0] == {"method": "npo", "p_t": 0.01}  # the input entries are not modified


@pytest.mark.parametrize("n,m", [(1, 1), (2, 2), (5, 5), (10, 10), (40, 40), (100, 100), (400, 400), (3, 7), (40, 60)])
def test_ks_floor_matches_scipy_on_fully_separated_samples(n, m):
    """The exact formula against scipy's exact two-sample KS test on two samples that do not overlap (D = 1)."""
    r = stats.ks_2samp(np.arange(n, dtype=float), np.arange(m, dtype=float) + n + 0.5)
    assert r.statistic == 1.0
    assert ks_min_log10_p(n, m) == pytest.approx(math.log10(r.pvalue), abs=1e-9)
    # any overlap is a larger p: the floor is the minimum
    if n > 1:
        shifted = stats.ks_2samp(np.arange(n, dtype=float), np.arange(m, dtype=float) + n - 1.5)
        assert math.log10(shifted.pvalue) > ks_min_log10_p(n, m)


def test_ks_floor_values_and_inputs():
    assert ks_min_log10_p(40) == pytest.approx(math.log10(2 / math.comb(80, 40)))
    assert ks_min_log10_p(40) == ks_min_log10_p(40, 40)
    with pytest.raises(ValueError):
        ks_min_log10_p(0)
