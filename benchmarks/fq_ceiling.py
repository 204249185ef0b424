"""How low can Forget Quality go at the demo's forget size? (benchmarks/RESULTS.md, issue 11)

FQ is the KS p-value between two sets of forget-set truth ratios (docs/metrics.md#forget-quality-fq). Its floor at n rows per side is
set by how far apart the two distributions can be: the KS statistic D. This script measures the largest D the
tiny testbed offers, between theta_r's truth ratios on authors it was trained on (retain_perturbed) and on
authors it never saw (the forget set) -- the gap a perfectly injected theta_o could show at best -- and prints
the log10 p-value at the demo's n and the rows per side that the same D would need for log10 FQ <= -8. Beside
it, the floor no model can pass at this n (D = 1, fully separated truth ratios): the same exact formula as the
controlled study's results.json `fq_ceiling` (studies.controlled.fq_ceiling, docs/metrics.md#fq-ceiling and
docs/metrics.md#practical-fq-ceiling): the study now writes both numbers itself.

    PYTHONPATH=src python benchmarks/fq_ceiling.py RUNS_DIR [key=value ...]
"""
import math
import statistics
import sys

from loc_unlearn import stages
from loc_unlearn.config import build_config
from loc_unlearn.studies.controlled import fq_ceiling


def main(runs: str, *overrides: str) -> None:
    cfg = build_config("tiny", overrides=[f"runs_dir={runs}", *overrides])
    data = stages.data_source(cfg)
    m = stages.evaluate(cfg, data, stages.retain_model(cfg, data))
    unseen, seen = m["forget"]["truth_ratio_raw"], m["retain"]["truth_ratio_raw"]
    med = lambda x: math.log(statistics.median(x))
    print(f"theta_r truth ratios: forget (unseen authors, n={len(unseen)}) median log {med(unseen):.3f}; "
          f"retain_perturbed (trained authors, n={len(seen)}) median log {med(seen):.3f}")
    c = fq_ceiling(len(unseen), m)  # what the controlled study writes as results.json fq_ceiling
    p = c["practical"]
    print(f"KS D {p['ks_d']:.3f}, log10 p {p['log10_fq']:.2f} at n={p['n_unseen']}/{p['n_seen']}; "
          f"log10 FQ <= -8 at this D needs {p['rows_for_minus_8']} rows per side")
    print(f"floor at n={c['n_forget']} (D = 1, exact; results.json fq_ceiling): log10 FQ {c['log10_fq_min']:.2f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
