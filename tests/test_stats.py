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
