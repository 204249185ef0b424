"""Injection under the norm cap (benchmarks/RESULTS.md): theta_r ES, one masked injection (forget ES, target, V_tgt/rest
norm ratio) and theta_o vs theta_r FQ on the tiny preset. usage: python benchmarks/injection_cap.py RUNS_DIR SEED [key=value ...]"""
import math
import sys
import time

from loc_unlearn.config import build_config
from loc_unlearn import stages
runs, seed, *ov = sys.argv[1:]
cfg = build_config("tiny", overrides=[f"runs_dir={runs}", *ov])
t = time.time()
tr = stages.finetune(cfg)
er = stages.evaluate(cfg, tr)
print(f"theta_r: forget ES {1-er['FS']:.3f} retain ES {er['RS']:.3f} MU {er['MU']:.3f} ({time.time()-t:.0f}s)", flush=True)
t = time.time()
to = stages.inject(cfg, tr, int(seed))
m = to.run.metrics()
eo = stages.evaluate(cfg, to, reference=tr)
tro = sorted(eo['forget']['truth_ratio_raw']); trr = sorted(er['forget']['truth_ratio_raw'])
med = lambda x: math.log(x[len(x)//2])
print(f"theta_o: ES {m['forget_es']:.3f} (target {m['target_es']:.3f}) exact {m['exact_greedy']:.2f} ratio {m['norm_ratio']['theta_o']} "
      f"log10FQ {eo['log10_FQ']:.2f} medlogTR o {med(tro):.2f} r {med(trr):.2f} retainES {eo['RS']:.3f} MU {eo['MU']:.3f} ({time.time()-t:.0f}s)", flush=True)
