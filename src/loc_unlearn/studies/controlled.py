"""The controlled Oracle-vs-Random experiment: the paper's causal test (docs/studies.md#controlled-study).

theta_r (retain-only) -> per seed s: V_tgt = random 10% of value vectors, theta_o = learn_reg injection
of the forget set into V_tgt only, V_rdm = random_complement(V_tgt) (stages.prepare_seed). Each
unlearning method runs from theta_o twice with identical hyperparameters: Oracle (mask V_tgt) and
Random (mask V_rdm). If localization informed unlearning, Oracle would beat Random; the paired tests
over seeds say whether it does. Every stage is a cached run (stages/), so a rerun reuses what is
complete and resumes the rest. The order of the study (common.py): theta_r, then one wave of jobs
building theta_o per seed, then one wave of unlearning runs, then gathering and the report.
"""
from __future__ import annotations

import dataclasses
import math

import scipy.stats

from .. import stages
from ..config import REGIONS, Config, method_config
from ..data.source import DataSource
from ..evaluate.stats import compare_groups, ks_min_log10_p, with_holm
from ..evaluate.tofu import FQ_FLOOR, forget_quality
from ..masks.diagnostics import concentrated
from ..masks.mask import Mask
from . import common, robustness
from .common import Study, Wave
from .controls import positive_control


def design(cfg: Config) -> Study:
    """The controlled study as a `Study` (common.run_study runs it)."""
    # Waves in order, so no two jobs ever build the same shared run: theta_o per seed, then unlearning,
    # then (study.robustness) the quantized references and the attacks on every unlearned model.
    # The all-parameter injection (the injections' target ES) is a job of the first wave, beside the seeds'.
    waves = [Wave("inject (theta_o)", inject_job, [{"full": True}] + [{"seed": s} for s in range(cfg.study.seeds)]),
             Wave("unlearning runs", unlearn_job, enumerate_jobs(cfg))]
    if robustness.enabled(cfg):
        refs = [{"model": "theta_r"}] + [{"model": "theta_o", "seed": s} for s in range(cfg.study.seeds)]
        waves += [Wave("quantization references", reference_job, refs),
                  Wave("robustness attacks", attack_job, enumerate_jobs(cfg))]
    return Study(name="controlled", inputs=stages.retain_model,  # theta_r, shared by every job
                 waves=waves, gather=gather)


def enumerate_jobs(cfg: Config) -> list[dict]:
    """Independent unlearning jobs (seed x method x region): what a cluster executor submits."""
    return [{"seed": s, "method": m, "region": r}
            for s in range(cfg.study.seeds) for m in cfg.study.methods for r in REGIONS]


def inject_job(cfg: Config, job: dict) -> dict:
    """theta_o and the two masks of one seed, or ({"full": True}) the all-parameter injection that sets
    the target ES."""
    data = stages.data_source(cfg)
    if job.get("full"):
        stages.full_injection_es(cfg, data, stages.retain_model(cfg, data))
    else:
        stages.prepare_seed(cfg, data, stages.retain_model(cfg, data), job["seed"])
    return job


def _unlearn_run(cfg: Config, data: DataSource, job: dict) -> tuple:
    """(unlearning run, theta_o) of one job; recomputes nothing that is cached (theta_r, theta_o, masks)."""
    theta_r = stages.retain_model(cfg, data)
    prep = stages.prepare_seed(cfg, data, theta_r, job["seed"])
    ucfg = method_config(cfg.unlearn, job["method"])
    return stages.unlearn(cfg, data, prep["theta_o"], prep["masks"][job["region"]], theta_r, ucfg), prep["theta_o"]


def unlearn_job(cfg: Config, job: dict) -> dict:
    """One unlearning run."""
    return common.unlearn_result(job, _unlearn_run(cfg, stages.data_source(cfg), job)[0])


def attack_job(cfg: Config, job: dict) -> dict:
    """Relearning + quantization of one unlearning run's final and MU95 checkpoints (docs/attacks.md#attacks-in-the-studies)."""
    data = stages.data_source(cfg)
    run, theta_o = _unlearn_run(cfg, data, job)
    return {**job, "rows": robustness.attack_unlearned(cfg, data, job, run, theta_o)}


def reference_job(cfg: Config, job: dict) -> dict:
    """A quantization reference: theta_r (once), or theta_o of one seed."""
    data = stages.data_source(cfg)
    theta_r = stages.retain_model(cfg, data)
    if job["model"] == "theta_r":
        return robustness.reference_row(cfg, data, "theta_r", theta_r)
    return robustness.reference_row(cfg, data, "theta_o", stages.prepare_seed(cfg, data, theta_r, job["seed"])["theta_o"],
                                    seed=job["seed"])


def gather(cfg: Config, data: DataSource, outputs: dict[str, list[dict]]) -> dict:
    """results.json of the controlled study (schema in docs/contracts.md), from the cached runs."""
    theta_r = stages.retain_model(cfg, data)
    preps = [stages.prepare_seed(cfg, data, theta_r, s) for s in range(cfg.study.seeds)]
    runs = outputs["unlearning runs"]
    m_r = stages.evaluate(cfg, data, theta_r)  # cached: theta_r's own metrics (FQ's reference)
    res = {"ratio": cfg.inject.ratio, "setup": common.setup_info(cfg, data, theta_r.path),
           "injection": [_injection_row(cfg, pr["theta_o"].run.metrics()) for pr in preps],
           "runs": runs, "tests": paired_tests(runs, cfg.study.methods, cfg.eval.metrics),
           "fq_ceiling": fq_ceiling(len(data.eval_sets()["forget"]), m_r),
           "theta_r": {"forget_es": m_r["forget"]["es"], "retain_es": m_r["retain"]["es"], "MU": m_r["MU"],
                       "MU_sets": m_r.get("MU_sets")},
           "masks": [{"seed": pr["seed"], "name": r, "per_layer_counts": Mask.load(pr["masks"][r]).per_layer_counts()}
                     for pr in preps for r in REGIONS]}
    if robustness.enabled(cfg):
        rows = [row for job in outputs["robustness attacks"] for row in job["rows"]]
        # the robustness tests are their own Holm family (docs/statistics.md#multiple-comparisons)
        tests = with_holm(robustness.paired_tests(rows, cfg.study.methods, robustness.settings(cfg)))
        res["robustness"] = robustness.section(cfg, rows, outputs["quantization references"], tests)
    if cfg.study.localizers:
        res["localization_check"] = [row for pr in preps[:1] for row in localization_check(cfg, data, pr)]
    if cfg.study.output_fit:
        res["output_fit"] = stages.output_fit(cfg, data, theta_r, preps[0])
    res["positive_control"] = positive_control(cfg, data, theta_r, preps)
    return res


def _injection_row(cfg: Config, met: dict) -> dict:
    """results.json `injection` entry of one seed, from its inject run's metrics."""
    return ({k: v for k, v in met.items() if k in ("seed", "forget_es", "target_es", "reached", "exact_greedy")} |
            {"full_ft_es": met["target_es"] / cfg.inject.target_es_fraction,
             "norm_ratio": met.get("norm_ratio", {}).get("theta_o", {}).get("overall")})


def paired_tests(runs: list[dict], methods: list[str], extra: list[str] = ()) -> list[dict]:
    """Oracle vs Random per (method, metric), paired by seed (docs/studies.md#step-4-comparison), with t interval, MDD (docs/statistics.md#minimum-detectable-difference-mdd)
    and MU95 censoring counts: evaluate.stats.compare_groups. `extra`: the eval.metrics, each at the runs'
    last fully evaluated point. These tests are the headline's family: each carries `p_holm`, Holm over all
    of them, and `holm_m`, the family size (docs/statistics.md#multiple-comparisons)."""
    return with_holm([compare_groups(runs, m, metric) for m in methods for metric in ("aues", "mu95", *extra)])


def fq_ceiling(n_forget: int, theta_r_metrics: dict | None = None) -> dict:
    """results.json `fq_ceiling` (docs/metrics.md#fq-ceiling): the lowest log10 FQ this run can report with
    `n_forget` forget rows per side, the exact KS floor (fully separated truth ratios), or FQ's own floor
    (1e-300) where that is higher (from about 500 rows per side). With `theta_r_metrics` (theta_r's own
    evaluation) also the practical ceiling (docs/metrics.md#practical-fq-ceiling): FQ between theta_r's truth
    ratios on authors it never saw (the forget set) and on authors it was trained on (the retain eval set), the
    gap a perfectly injected theta_o could show at best, and the rows per side that gap needs for log10 FQ <= -8."""
    out = {"n_forget": n_forget, "log10_fq_min": max(ks_min_log10_p(n_forget), math.log10(FQ_FLOOR))}
    tr = theta_r_metrics or {}
    unseen = (tr.get("forget") or {}).get("truth_ratio_raw")
    seen = (tr.get("retain") or {}).get("truth_ratio_raw")
    if unseen and seen:
        d = float(scipy.stats.ks_2samp(unseen, seen).statistic)
        # FQ itself (its floor included) between the two sets: the practical ceiling is an FQ value
        out["practical"] = {"ks_d": d, "log10_fq": forget_quality(unseen, seen)[1],
                            "n_unseen": len(unseen), "n_seen": len(seen),
                            "rows_for_minus_8": rows_for_log10_p(d, -8.0)}
    return out


def rows_for_log10_p(d: float, log10_p: float) -> int | None:
    """Rows per side at which a KS statistic `d` (equal sizes) reaches `log10_p`, by the asymptotic tail
    p = 2 exp(-d^2 n) of the two-sided test with n = m (docs/metrics.md#practical-fq-ceiling); None for d = 0."""
    return math.ceil(math.log(2 / 10 ** log10_p) / (d * d)) if d > 0 else None


def localization_check(cfg: Config, data: DataSource, prep: dict) -> list[dict]:
    """Beyond the paper: can each localization method find V_tgt on theta_o? (docs/studies.md#step-5-localization-check), in every
    scope of `study.scopes`. Sanity rows first: `norm` (||v||, finds V_tgt only if the injection inflated
    its norms) and `norm-ref` (||v - v_r|| against theta_r, finds V_tgt exactly by construction)."""
    tgt = Mask.load(prep["masks"]["oracle"])
    theta_r = stages.retain_model(cfg, data)
    rows = []
    for scope in cfg.study.scopes:
        for method in ["norm", "norm-ref", *cfg.study.localizers]:
            # Another seed than V_tgt's own (which is the `random` method with seed s): otherwise "random"
            # would trivially recover V_tgt.
            lcfg = dataclasses.replace(cfg.localize, method=method.removesuffix("-ref"), ratio=cfg.inject.ratio,
                                       seed=prep["seed"] + 20_000, source_mask="", scope=scope,
                                       reference=theta_r.path if method == "norm-ref" else "")
            m = Mask.load(stages.localize(cfg, data, prep["theta_o"], lcfg))
            pr = m.precision_recall(tgt)
            counts = m.per_layer_counts()
            rows.append({"seed": prep["seed"], "method": method, "scope": scope, "precision": pr["precision"],
                         "recall": pr["recall"], "per_layer_counts": counts, "layer_concentrated": concentrated(counts)})
    return rows
