"""The controlled Oracle-vs-Random experiment: the paper's causal test (SPEC §7).

theta_r (retain-only) -> per seed s: V_tgt = random 10% of value vectors, theta_o = learn_reg injection
of the forget set into V_tgt only, V_rdm = random_complement(V_tgt). Each unlearning method runs from
theta_o twice with identical hyperparameters: Oracle (mask V_tgt) and Random (mask V_rdm). If
localization informed unlearning, Oracle would beat Random; the paired tests over seeds say whether it
does. Every stage is a cached run (stages.py), so a rerun reuses what is complete and resumes the rest.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict
from pathlib import Path

from .. import stages
from ..config import Config, method_config
from ..runs import cached
from ..utils import log
from .executor import execute

REGIONS = ("oracle", "random")


def prepare_seed(cfg: Config, theta_r: stages.ModelRef, seed: int) -> dict:
    """theta_o and the two masks for one seed."""
    theta_o = stages.inject(cfg, theta_r, seed)
    tgt = theta_o.run.path / "mask.safetensors"
    rdm = stages.random_mask(cfg, theta_r, seed + 10_000, cfg.inject.ratio, source_mask=str(tgt))
    return {"seed": seed, "theta_o": theta_o, "masks": {"oracle": tgt, "random": rdm}}


def enumerate_jobs(cfg: Config) -> list[dict]:
    """Independent unlearning jobs (seed x method x region): what a cluster executor submits."""
    return [{"seed": s, "method": m, "region": r}
            for s in range(cfg.study.seeds) for m in cfg.study.methods for r in REGIONS]


def run_job(cfg: Config, job: dict) -> dict:
    """One unlearning run; recomputes nothing that is cached (theta_r, theta_o, masks)."""
    theta_r = stages.retain_model(cfg)
    prep = prepare_seed(cfg, theta_r, job["seed"])
    ucfg = method_config(cfg.unlearn, job["method"])
    run = stages.unlearn(cfg, prep["theta_o"], prep["masks"][job["region"]], theta_r, ucfg)
    met = run.metrics()
    return {**job, "aues": met["aues"], "mu95": met["mu95"], "mu95_not_reached": met["mu95_not_reached"],
            "trajectory": met["trajectory"], "run_dir": str(run.path)}


def paired_tests(runs: list[dict], methods: list[str]) -> list[dict]:
    """Oracle vs Random per (method, metric), paired by seed (SPEC §7 step 4), with t interval, MDD (SPEC §11)
    and MU95 censoring counts: evaluate.stats.compare_groups."""
    from ..evaluate.stats import compare_groups

    return [compare_groups(runs, m, metric) for m in methods for metric in ("aues", "mu95")]


def localization_check(cfg: Config, prep: dict) -> list[dict]:
    """Beyond the paper: can each localization method find V_tgt on theta_o? (SPEC §7 step 5)."""
    from ..masks.mask import Mask

    tgt = Mask.load(prep["masks"]["oracle"])
    rows = []
    for method in cfg.study.localizers:
        # Another seed than V_tgt's own (which is the `random` method with seed s): otherwise "random"
        # would trivially recover V_tgt.
        lcfg = dataclasses.replace(cfg.localize, method=method, ratio=cfg.inject.ratio,
                                   seed=prep["seed"] + 20_000, source_mask="")
        m = Mask.load(stages.localize(cfg, prep["theta_o"], lcfg))
        pr = m.precision_recall(tgt)
        rows.append({"seed": prep["seed"], "method": method, "precision": pr["precision"], "recall": pr["recall"],
                     "per_layer_counts": m.per_layer_counts()})
    return rows


def run_study(cfg: Config) -> Path:
    """Run (or resume) the whole controlled study; returns the study directory with results.json."""
    from ..masks.mask import Mask
    from ..report import build_report, setup_info
    from ..utils import write_json_atomic

    t0 = time.time()
    key = {"study": "controlled", "config": asdict(cfg) | {"runs_dir": "", "out": "", "input_model": ""},
           "data": stages.data_source(cfg)[1]}

    def build(p: Path) -> dict:
        theta_r = stages.retain_model(cfg)
        # Two waves, so no two jobs ever build the same shared run: theta_o per seed, then unlearning.
        execute(cfg, prep_job, [{"seed": s} for s in range(cfg.study.seeds)], "inject (theta_o)")
        preps = [prepare_seed(cfg, theta_r, s) for s in range(cfg.study.seeds)]
        runs = execute(cfg, run_job, enumerate_jobs(cfg), "unlearning runs")
        res = {"study": "controlled", "preset": cfg.preset, "config": key["config"],
               "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "ratio": cfg.inject.ratio,
               "setup": setup_info(cfg, theta_r.path),
               "injection": [{k: v for k, v in pr["theta_o"].run.metrics().items()
                              if k in ("seed", "forget_es", "target_es", "reached", "exact_greedy")} |
                             {"full_ft_es": pr["theta_o"].run.metrics()["target_es"] / cfg.inject.target_es_fraction}
                             for pr in preps],
               "runs": runs, "tests": paired_tests(runs, cfg.study.methods),
               "masks": [{"seed": pr["seed"], "name": r, "per_layer_counts": Mask.load(pr["masks"][r]).per_layer_counts()}
                         for pr in preps for r in REGIONS]}
        if cfg.study.localizers:
            res["localization_check"] = [row for pr in preps[:1] for row in localization_check(cfg, pr)]
        if cfg.study.output_fit:
            from .output_fit import run_output_fit

            res["output_fit"] = run_output_fit(cfg, theta_r, preps[0])
        res["elapsed_s"] = round(time.time() - t0, 1)
        write_json_atomic(p / "results.json", res)
        build_report(p)
        return {"elapsed_s": res["elapsed_s"], "tests": res["tests"]}

    run = cached(cfg.runs_dir, "study-controlled", key, build)
    return run.path


def prep_job(cfg: Config, job: dict) -> dict:
    prepare_seed(cfg, stages.retain_model(cfg), job["seed"])
    return job


def print_summary(study_dir: Path) -> None:
    import json

    from ..report.tables import cli_summary

    res = json.loads((study_dir / "results.json").read_text())
    print("\n" + "\n".join(cli_summary(res)))
    for inj in res["injection"]:
        print(f"injection seed {inj['seed']}: forget ES {inj['forget_es']:.3f} (target {inj['target_es']:.3f}, "
              f"{'reached' if inj['reached'] else 'NOT reached'})")
    if "localization_check" in res:
        print("localization precision at recovering V_tgt (random expects "
              f"{res['ratio']:.2f}): " + ", ".join(f"{r['method']} {r['precision']:.2f}" for r in res["localization_check"]))
    if "output_fit" in res:
        of = res["output_fit"]
        print(f"output fit: stitched FS {of['stitched']['FS']:.3f} RS {of['stitched']['RS']:.3f} "
              f"(theta_o FS {of['theta_o']['FS']:.3f}, theta_r FS {of['theta_r']['FS']:.3f})")
    print(f"elapsed {res['elapsed_s']:.0f} s (first run)")


def cmd_study(cfg: Config) -> None:
    d = run_study(cfg)
    print_summary(d)
    print(f"\nreport: {d / 'report.html'}\n        {d / 'report.md'}\nresults: {d / 'results.json'}")


def cmd_demo(cfg: Config) -> None:
    log(f"demo: controlled study on preset {cfg.preset} ({cfg.study.seeds} seeds x {', '.join(cfg.study.methods)} "
        f"x oracle/random), output-fit analysis, report; runs in {cfg.runs_dir}/")
    t0 = time.time()
    cmd_study(cfg)
    print(f"demo finished in {time.time() - t0:.0f} s")
