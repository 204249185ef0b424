"""How low can Forget Quality go at the demo's forget size? (benchmarks/RESULTS.md, issue 11)

FQ is the KS p-value between two sets of forget-set truth ratios (docs/metrics.md#forget-quality-fq). Its floor at n rows per side is
set by how far apart the two distributions can be: the KS statistic D. This script measures the largest D the
tiny testbed offers, between theta_r's truth ratios on authors it was trained on (retain_perturbed) and on
authors it never saw (the forget set) -- the gap a perfectly injected theta_o could show at best -- and prints
the log10 p-value at the demo's n and the rows per side that the same D would need for log10 FQ <= -8. Beside
it, the floor no model can pass at this n (D = 1, fully separated truth ratios): the same exact formula as the
controlled study's results.json `fq_ceiling` (loc_unlearn.evaluate.stats.ks_min_log10_p, docs/metrics.md#fq-ceiling).

    PYTHONPATH=src python benchmarks/fq_ceiling.py RUNS_DIR [key=value ...]
"""
import math
import statistics
import sys

from scipy import stats

from loc_unlearn import stages
from loc_unlearn.config import build_config
from loc_unlearn.studies.controlled import fq_ceiling


def rows_needed(d: float, log10_p: float = -8.0) -> int:
    """Rows per side at which a KS statistic `d` (equal sizes) reaches `log10_p`, by the asymptotic
    two-sided tail p = 2 exp(-2 d^2 n m / (n + m)), which for n = m is 2 exp(-d^2 n). An approximation: at
    D = 1 it gives log10 p = -17.1 at n = 40 where the exact floor (main's last line) is -22.7."""
    return math.ceil(math.log(2 / 10 ** log10_p) / (d * d))


def main(runs: str, *overrides: str) -> None:
    cfg = build_config("tiny", overrides=[f"runs_dir={runs}", *overrides])
    theta_r = stages.retain_model(cfg, stages.data_source(cfg))
    m = stages.evaluate(cfg, stages.data_source(cfg), theta_r)
    unseen, seen = m["forget"]["truth_ratio_raw"], m["retain"]["truth_ratio_raw"]
    ks = stats.ks_2samp(unseen, seen)
    med = lambda x: math.log(statistics.median(x))
    print(f"theta_r truth ratios: forget (unseen authors, n={len(unseen)}) median log {med(unseen):.3f}; "
          f"retain_perturbed (trained authors, n={len(seen)}) median log {med(seen):.3f}")
    print(f"KS D {ks.statistic:.3f}, log10 p {math.log10(ks.pvalue):.2f} at n={len(unseen)}; "
          f"log10 FQ <= -8 at this D needs {rows_needed(ks.statistic)} rows per side")
    floor = fq_ceiling(len(unseen))
    print(f"floor at n={floor['n_forget']} (D = 1, exact; results.json fq_ceiling): log10 FQ {floor['log10_fq_min']:.2f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
