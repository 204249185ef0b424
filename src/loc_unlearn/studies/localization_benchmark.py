"""Localization methods vs random (the paper's Table 1; docs/studies.md#localization-benchmark).

A model fine-tuned on the full dataset; for each localization method a mask of `localize.ratio` over
value vectors from forget/retain data; for each unlearning method, masked unlearning on the forget
split; AUES and MU95 per (localizer, method). FQ reference = the retain-only model theta_r.
The order of the study (common.py): the two models and every mask in process, then one wave of
unlearning runs, then gathering and the report.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .. import stages
from ..config import Config, method_config
from ..data.source import DataSource
from ..masks.diagnostics import concentrated
from ..masks.mask import Mask
from ..utils import progress
from . import common, robustness
from .common import Study, Wave

MATCHED = "random~"  # `random~wagle`: random value vectors with WAGLE's per-layer counts
SCOPE = "@"  # `wagle@per_layer`: WAGLE's top-k taken in every layer (study.scopes)


def design(cfg: Config) -> Study:
    """The localization benchmark as a `Study` (common.run_study runs it)."""
    waves = [Wave("unlearning runs", unlearn_job, enumerate_jobs(cfg))]
    if robustness.enabled(cfg):  # attacks (docs/attacks.md#attacks-in-the-studies) on every unlearned model, after the references
        waves += [Wave("quantization references", reference_job, [{"model": "full"}, {"model": "theta_r"}]),
                  Wave("robustness attacks", attack_job, enumerate_jobs(cfg))]
    return Study(name="localization",
                 inputs=build_masks,  # the models and every mask, so no two jobs build one (random~X needs X's)
                 waves=waves, gather=gather, splits=("full",))  # the full-data model is fine-tuned on `full`


def localizers(cfg: Config) -> list[str]:
    """Mask labels: every localizer in every scope of `study.scopes` (`NAME@per_layer` off the global scope)."""
    names = list(cfg.study.localizers)
    if cfg.study.layer_matched:
        names += [MATCHED + loc for loc in cfg.study.localizers if not loc.startswith("random")]
    return [n if scope == "global" else f"{n}{SCOPE}{scope}" for scope in cfg.study.scopes for n in names]


def enumerate_jobs(cfg: Config) -> list[dict]:
    return [{"localizer": loc, "method": m} for loc in localizers(cfg) for m in cfg.study.methods]


def build_masks(cfg: Config, data: DataSource) -> dict[str, Path]:
    full, _ = _models(cfg, data)
    return {loc: _mask(cfg, data, full, loc) for loc in progress(localizers(cfg), desc="localize")}


def _unlearn_run(cfg: Config, data: DataSource, job: dict):
    full, ret = _models(cfg, data)
    mask = _mask(cfg, data, full, job["localizer"])
    return stages.unlearn(cfg, data, full, mask, ret, method_config(cfg.unlearn, job["method"]))


def unlearn_job(cfg: Config, job: dict) -> dict:
    return common.unlearn_result(job, _unlearn_run(cfg, stages.data_source(cfg), job))


def attack_job(cfg: Config, job: dict) -> dict:
    """Relearning (ES_o = the full-data model's) + quantization of one run's final and MU95 checkpoints."""
    data = stages.data_source(cfg)
    return {**job, "rows": robustness.attack_unlearned(cfg, data, job, _unlearn_run(cfg, data, job),
                                                       _models(cfg, data)[0])}


def reference_job(cfg: Config, job: dict) -> dict:
    """A quantization reference: the full-data model (theta_0 of every run) or theta_r."""
    data = stages.data_source(cfg)
    full, ret = _models(cfg, data)
    return robustness.reference_row(cfg, data, job["model"], full if job["model"] == "full" else ret)


def gather(cfg: Config, data: DataSource, outputs: dict[str, list[dict]]) -> dict:
    """results.json of the localization benchmark (schema in docs/contracts.md), from the cached runs."""
    full, _ = _models(cfg, data)
    masks = {loc: _mask(cfg, data, full, loc) for loc in localizers(cfg)}
    res = {"ratio": cfg.localize.ratio, "runs": outputs["unlearning runs"],
           "masks": [{"localizer": loc, "per_layer_counts": c, "layer_concentrated": concentrated(c)}
                     for loc, m in masks.items() for c in [Mask.load(m).per_layer_counts()]]}
    if robustness.enabled(cfg):  # values per localizer x method; no pairing (one model per cell)
        rows = [row for job in outputs["robustness attacks"] for row in job["rows"]]
        res["robustness"] = robustness.section(cfg, rows, outputs["quantization references"])
    return res


def _models(cfg: Config, data: DataSource) -> tuple[stages.ModelRef, stages.ModelRef]:
    """(model fine-tuned on the full set, theta_r = the FQ reference)."""
    return stages.finetune_on(cfg, data, "full"), stages.retain_model(cfg, data)


def _mask(cfg: Config, data: DataSource, model: stages.ModelRef, localizer: str) -> Path:
    name, _, scope = localizer.partition(SCOPE)
    if name.startswith(MATCHED):  # random~X@s: random vectors with the per-layer counts of X@s
        src = _mask(cfg, data, model, localizer[len(MATCHED):])
        lcfg = dataclasses.replace(cfg.localize, method="random_layer_matched", source_mask=str(src))
    else:
        lcfg = dataclasses.replace(cfg.localize, method=name, source_mask="", scope=scope or "global")
    return stages.localize(cfg, data, model, lcfg)
