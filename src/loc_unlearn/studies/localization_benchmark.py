"""Localization methods vs random (the paper's Table 1; SPEC §8).

A model fine-tuned on the full dataset; for each localization method a mask of `localize.ratio` over
value vectors from forget/retain data; for each unlearning method, masked unlearning on the forget
split; AUES and MU95 per (localizer, method). FQ reference = the retain-only model theta_r.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict
from pathlib import Path

from .. import stages
from ..config import Config, method_config
from ..runs import cached
from ..utils import progress
from .executor import execute


def _models(cfg: Config) -> tuple[stages.ModelRef, stages.ModelRef]:
    """(model fine-tuned on the full set, theta_r = the FQ reference)."""
    return stages.finetune_on(cfg, "full"), stages.retain_model(cfg)


MATCHED = "random~"  # `random~wagle`: random value vectors with WAGLE's per-layer counts


def localizers(cfg: Config) -> list[str]:
    names = list(cfg.study.localizers)
    if cfg.study.layer_matched:
        names += [MATCHED + loc for loc in cfg.study.localizers if not loc.startswith("random")]
    return names


def enumerate_jobs(cfg: Config) -> list[dict]:
    return [{"localizer": loc, "method": m} for loc in localizers(cfg) for m in cfg.study.methods]


def _mask(cfg: Config, model: stages.ModelRef, localizer: str) -> Path:
    if localizer.startswith(MATCHED):
        src = _mask(cfg, model, localizer[len(MATCHED):])
        lcfg = dataclasses.replace(cfg.localize, method="random_layer_matched", source_mask=str(src))
    else:
        lcfg = dataclasses.replace(cfg.localize, method=localizer, source_mask="")
    return stages.localize(cfg, model, lcfg)


def run_job(cfg: Config, job: dict) -> dict:
    full, ret = _models(cfg)
    mask = _mask(cfg, full, job["localizer"])
    run = stages.unlearn(cfg, full, mask, ret, method_config(cfg.unlearn, job["method"]))
    met = run.metrics()
    return {**job, "aues": met["aues"], "mu95": met["mu95"], "mu95_not_reached": met["mu95_not_reached"],
            "trajectory": met["trajectory"], "run_dir": str(run.path)}


def run_study(cfg: Config) -> Path:
    from ..masks.mask import Mask
    from ..report import build_report
    from ..utils import write_json_atomic

    t0 = time.time()
    key = {"study": "localization", "config": asdict(cfg) | {"runs_dir": "", "out": "", "input_model": ""},
           "data": stages.data_source(cfg)[1]}

    def build(p: Path) -> dict:
        full, _ = _models(cfg)
        masks = {loc: _mask(cfg, full, loc) for loc in progress(localizers(cfg), desc="localize")}
        runs = execute(cfg, run_job, enumerate_jobs(cfg), "unlearning runs")
        res = {"study": "localization", "preset": cfg.preset, "config": key["config"], "ratio": cfg.localize.ratio,
               "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs": runs,
               "masks": [{"localizer": loc, "per_layer_counts": Mask.load(m).per_layer_counts()}
                         for loc, m in masks.items()],
               "elapsed_s": round(time.time() - t0, 1)}
        write_json_atomic(p / "results.json", res)
        build_report(p)
        return {"elapsed_s": res["elapsed_s"]}

    return cached(cfg.runs_dir, "study-localization", key, build).path


def cmd_study(cfg: Config) -> None:
    import json

    d = run_study(cfg)
    res = json.loads((d / "results.json").read_text())
    methods = cfg.study.methods
    print(f"\n{'localizer':18s} " + " ".join(f"{m + ' AUES':>10s} {m + ' MU95':>10s}" for m in methods))
    for loc in localizers(cfg):
        cells = []
        for m in methods:
            r = next(x for x in res["runs"] if x["localizer"] == loc and x["method"] == m)
            cells.append(f"{r['aues']:10.3f} {r['mu95']:10.2f}")
        print(f"{loc:18s} " + " ".join(cells))
    print(f"\nreport: {d / 'report.html'}\n        {d / 'report.md'}\nresults: {d / 'results.json'}")
