"""Injection under the norm cap (benchmarks/RESULTS.md, issue 11), tiny preset: theta_r's forget/retain ES, one
masked injection (forget ES vs its target, V_tgt/rest norm ratio) and theta_o vs theta_r Forget Quality.

    PYTHONPATH=src python benchmarks/injection_cap.py RUNS_DIR SEED [key=value ...]   # a fresh RUNS_DIR per setting
"""
import math
import statistics
import sys
import time

from loc_unlearn import stages
from loc_unlearn.config import build_config


def median_log(truth_ratios):
    return math.log(statistics.median(truth_ratios))


def main(runs: str, seed: str, *overrides: str) -> None:
    cfg = build_config("tiny", overrides=[f"runs_dir={runs}", *overrides])
    t = time.time()
    theta_r = stages.finetune(cfg, stages.data_source(cfg))
    er = stages.evaluate(cfg, stages.data_source(cfg), theta_r)
    print(f"theta_r: forget ES {1 - er['FS']:.3f} retain ES {er['RS']:.3f} MU {er['MU']:.3f} ({time.time() - t:.0f} s)")
    t = time.time()
    theta_o = stages.inject(cfg, stages.data_source(cfg), theta_r, int(seed))
    inj = theta_o.run.metrics()
    eo = stages.evaluate(cfg, stages.data_source(cfg), theta_o, reference=theta_r)
    ratio = inj["norm_ratio"]["theta_o"]
    print(f"theta_o: forget ES {inj['forget_es']:.3f} (target {inj['target_es']:.3f}), exact {inj['exact_greedy']:.2f}, "
          f"norm ratio {ratio['overall']:.3f} (per layer {[x if x is None else round(x, 3) for x in ratio['per_layer']]}), "
          f"log10 FQ {eo['log10_FQ']:.2f}, "
          f"median log truth ratio {median_log(eo['forget']['truth_ratio_raw']):.2f} "
          f"(theta_r {median_log(er['forget']['truth_ratio_raw']):.2f}), retain ES {eo['RS']:.3f}, "
          f"MU {eo['MU']:.3f} ({time.time() - t:.0f} s)")


if __name__ == "__main__":
    main(*sys.argv[1:])
