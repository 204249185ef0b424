"""The controlled Oracle-vs-Random experiment: the paper's causal test (SPEC §7).

theta_r (retain-only) -> per seed s: V_tgt = random 10% of value vectors, theta_o = learn_reg injection
of the forget set into V_tgt only, V_rdm = random_complement(V_tgt) (stages.prepare_seed). Each
unlearning method runs from theta_o twice with identical hyperparameters: Oracle (mask V_tgt) and
Random (mask V_rdm). If localization informed unlearning, Oracle would beat Random; the paired tests
over seeds say whether it does. Every stage is a cached run (stages.py), so a rerun reuses what is
complete and resumes the rest. The order of the study (common.py): theta_r, then one wave of jobs
building theta_o per seed, then one wave of unlearning runs, then gathering and the report.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path


from .. import stages
from ..config import REGIONS, Config, method_config
from ..evaluate.stats import compare_groups
from ..masks.diagnostics import concentrated
from ..masks.mask import Mask
from ..report import cli_summary, setup_info
from ..report.tables import positive_control_line
from ..utils import log
from . import common, robustness
from .common import Study, Wave
from .controls import positive_control
from .output_fit import run_output_fit


def cmd_demo(cfg: Config) -> None:
    log(f"demo: controlled study on preset {cfg.preset} ({cfg.study.seeds} seeds x {', '.join(cfg.study.methods)} "
        f"x oracle/random), output-fit analysis, report; runs in {cfg.runs_dir}/")
    t0 = time.time()
    cmd_study(cfg)
    print(f"demo finished in {time.time() - t0:.0f} s")


def cmd_study(cfg: Config) -> None:
    d = run_study(cfg)
    print_summary(d)
    print(f"\nreport: {d / 'report.html'}\n        {d / 'report.md'}\nresults: {d / 'results.json'}")


def run_study(cfg: Config) -> Path:
    """Run (or resume) the whole controlled study; returns the study directory with results.json."""
    # Waves in order, so no two jobs ever build the same shared run: theta_o per seed, then unlearning,
    # then (study.robustness) the quantized references and the attacks on every unlearned model.
    waves = [Wave("inject (theta_o)", inject_job, [{"seed": s} for s in range(cfg.study.seeds)]),
             Wave("unlearning runs", unlearn_job, enumerate_jobs(cfg))]
    if robustness.enabled(cfg):
        refs = [{"model": "theta_r"}] + [{"model": "theta_o", "seed": s} for s in range(cfg.study.seeds)]
        waves += [Wave("quantization references", reference_job, refs),
                  Wave("robustness attacks", attack_job, enumerate_jobs(cfg))]
    return common.run_study(cfg, Study(name="controlled", inputs=stages.retain_model,  # theta_r, shared by every job
                                       waves=waves, gather=gather))


def enumerate_jobs(cfg: Config) -> list[dict]:
    """Independent unlearning jobs (seed x method x region): what a cluster executor submits."""
    return [{"seed": s, "method": m, "region": r}
            for s in range(cfg.study.seeds) for m in cfg.study.methods for r in REGIONS]


def inject_job(cfg: Config, job: dict) -> dict:
    """theta_o and the two masks of one seed."""
    stages.prepare_seed(cfg, stages.retain_model(cfg), job["seed"])
    return job


def _unlearn_run(cfg: Config, job: dict) -> tuple:
    """(unlearning run, theta_o) of one job; recomputes nothing that is cached (theta_r, theta_o, masks)."""
    theta_r = stages.retain_model(cfg)
    prep = stages.prepare_seed(cfg, theta_r, job["seed"])
    ucfg = method_config(cfg.unlearn, job["method"])
    return stages.unlearn(cfg, prep["theta_o"], prep["masks"][job["region"]], theta_r, ucfg), prep["theta_o"]


def unlearn_job(cfg: Config, job: dict) -> dict:
    """One unlearning run."""
    return common.unlearn_result(job, _unlearn_run(cfg, job)[0])


def attack_job(cfg: Config, job: dict) -> dict:
    """Relearning + quantization of one unlearning run's final and MU95 checkpoints (SPEC §10)."""
    run, theta_o = _unlearn_run(cfg, job)
    return {**job, "rows": robustness.attack_unlearned(cfg, job, run, theta_o)}


def reference_job(cfg: Config, job: dict) -> dict:
    """A quantization reference: theta_r (once), or theta_o of one seed."""
    theta_r = stages.retain_model(cfg)
    if job["model"] == "theta_r":
        return robustness.reference_row(cfg, "theta_r", theta_r)
    return robustness.reference_row(cfg, "theta_o", stages.prepare_seed(cfg, theta_r, job["seed"])["theta_o"],
                                    seed=job["seed"])


def gather(cfg: Config, outputs: dict[str, list[dict]]) -> dict:
    """results.json of the controlled study (schema in docs/contracts.md), from the cached runs."""
    theta_r = stages.retain_model(cfg)
    preps = [stages.prepare_seed(cfg, theta_r, s) for s in range(cfg.study.seeds)]
    runs = outputs["unlearning runs"]
    res = {"ratio": cfg.inject.ratio, "setup": setup_info(cfg, theta_r.path),
           "injection": [{k: v for k, v in pr["theta_o"].run.metrics().items()
                          if k in ("seed", "forget_es", "target_es", "reached", "exact_greedy")} |
                         {"full_ft_es": pr["theta_o"].run.metrics()["target_es"] / cfg.inject.target_es_fraction,
                          "norm_ratio": pr["theta_o"].run.metrics().get("norm_ratio", {}).get("theta_o", {}).get("overall")}
                         for pr in preps],
           "runs": runs, "tests": paired_tests(runs, cfg.study.methods),
           "masks": [{"seed": pr["seed"], "name": r, "per_layer_counts": Mask.load(pr["masks"][r]).per_layer_counts()}
                     for pr in preps for r in REGIONS]}
    if robustness.enabled(cfg):
        rows = [row for job in outputs["robustness attacks"] for row in job["rows"]]
        res["robustness"] = robustness.section(cfg, rows, outputs["quantization references"],
                                               robustness.paired_tests(rows, cfg.study.methods, robustness.settings(cfg)))
    if cfg.study.localizers:
        res["localization_check"] = [row for pr in preps[:1] for row in localization_check(cfg, pr)]
    if cfg.study.output_fit:
        res["output_fit"] = run_output_fit(cfg, theta_r, preps[0])
    res["positive_control"] = positive_control(cfg, theta_r, preps)
    return res


def paired_tests(runs: list[dict], methods: list[str]) -> list[dict]:
    """Oracle vs Random per (method, metric), paired by seed (SPEC §7 step 4), with t interval, MDD (SPEC §11)
    and MU95 censoring counts: evaluate.stats.compare_groups."""
    return [compare_groups(runs, m, metric) for m in methods for metric in ("aues", "mu95")]


def localization_check(cfg: Config, prep: dict) -> list[dict]:
    """Beyond the paper: can each localization method find V_tgt on theta_o? (SPEC §7 step 5), in every
    scope of `study.scopes`. Sanity rows first: `norm` (||v||, finds V_tgt only if the injection inflated
    its norms) and `norm-ref` (||v - v_r|| against theta_r, finds V_tgt exactly by construction)."""
    tgt = Mask.load(prep["masks"]["oracle"])
    theta_r = stages.retain_model(cfg)
    rows = []
    for scope in cfg.study.scopes:
        for method in ["norm", "norm-ref", *cfg.study.localizers]:
            # Another seed than V_tgt's own (which is the `random` method with seed s): otherwise "random"
            # would trivially recover V_tgt.
            lcfg = dataclasses.replace(cfg.localize, method=method.removesuffix("-ref"), ratio=cfg.inject.ratio,
                                       seed=prep["seed"] + 20_000, source_mask="", scope=scope,
                                       reference=theta_r.path if method == "norm-ref" else "")
            m = Mask.load(stages.localize(cfg, prep["theta_o"], lcfg))
            pr = m.precision_recall(tgt)
            counts = m.per_layer_counts()
            rows.append({"seed": prep["seed"], "method": method, "scope": scope, "precision": pr["precision"],
                         "recall": pr["recall"], "per_layer_counts": counts, "layer_concentrated": concentrated(counts)})
    return rows


def print_summary(study_dir: Path) -> None:
    res = json.loads((study_dir / "results.json").read_text())
    print("\n" + "\n".join(cli_summary(res)))
    for inj in res["injection"]:
        print(f"injection seed {inj['seed']}: forget ES {inj['forget_es']:.3f} (target {inj['target_es']:.3f}, "
              f"{'reached' if inj['reached'] else 'NOT reached'})")
    if "localization_check" in res:
        print("localization precision at recovering V_tgt (random expects "
              f"{res['ratio']:.2f}): " + ", ".join(f"{r['method']}{'' if r.get('scope', 'global') == 'global' else '@' + r['scope']} "
                                              f"{r['precision']:.2f}" for r in res["localization_check"]))
    if "positive_control" in res:
        print(positive_control_line(res["positive_control"]))
    if "output_fit" in res:
        of = res["output_fit"]
        print(f"output fit: stitched FS {of['stitched']['FS']:.3f} RS {of['stitched']['RS']:.3f} "
              f"(theta_o FS {of['theta_o']['FS']:.3f}, theta_r FS {of['theta_r']['FS']:.3f})")
    print(f"elapsed {res['elapsed_s']:.0f} s (first run)")
