"""The evaluation stages: one model's metrics (docs/metrics.md), cached per model, and a trajectory of saved
checkpoints evaluated the same way (the `trajectory` command: any trainer's HF-format checkpoints)."""
from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

from ..config import Config
from ..data.source import DataSource
from ..evaluate.record import Point
from ..evaluate.tofu import evaluate_model
from ..evaluate.tradeoff import summarize_trajectory
from ..registry import METRICS
from ..runs import cached
from ..utils import device_info, sha256_file, sha256_json
from .common import ModelRef, resolve_model


def evaluate(cfg: Config, data: DataSource, model: ModelRef, reference: ModelRef | None = None,
             es_only: bool = False) -> dict:
    """Metrics of one model (docs/metrics.md), cached; FQ against `reference` (theta_r) when given. `es_only`:
    forget/retain ES alone (eval.full_at=ends between a trajectory's end points)."""
    ref_tr = reference_truth_ratios(cfg, data, reference) if reference and not es_only else None

    def build(p: Path) -> dict:
        m, tok = model.load(cfg)
        return evaluate_model(m, tok, data.eval_sets(), cfg.eval, reference_truth_ratios=ref_tr,
                              es_only=es_only) | device_info(m)

    key = {"eval": eval_key(cfg), "model": model.fingerprint, "data": data.eval_fingerprint,
           "reference": reference.fingerprint if reference and not es_only else ""} | ({"es_only": True} if es_only else {})
    return cached(cfg.runs_dir, "evaluate", key, build).metrics()


def eval_key(cfg: Config) -> dict:
    """The config that per-model metrics depend on (run keys of every stage that evaluates models)."""
    # Trajectory-summary options do not change per-model metrics.
    e = asdict(cfg.eval)
    for k in ("reference", "curve", "envelope", "left_anchor", "mu95", "full_at"):
        e.pop(k)
    sources = {n: METRICS.fingerprint(n) for n in cfg.eval.metrics if METRICS.fingerprint(n)}
    if sources:  # plug-in metrics: their source files' content names every evaluation that computes them
        e["metric_sources"] = sources
    return e | {"max_eval_rows": cfg.data.max_eval_rows, "forget_split": cfg.data.forget_split}


def reference_truth_ratios(cfg: Config, data: DataSource, reference: ModelRef) -> list[float]:
    return evaluate(cfg, data, reference)["forget"]["truth_ratio_raw"]


def content_ref(text: str, key: str) -> ModelRef:
    """`resolve_model`, but a folder outside the runs dir is keyed by its files' content, so a rewritten
    checkpoint is evaluated again."""
    ref = resolve_model(text, key)
    p = Path(ref.path)
    if ref.run is None and p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in (".safetensors", ".json", ".model"))
        ref = ModelRef(ref.path, sha256_json({f.name: sha256_file(f) for f in files}))
    return ref


def step_of(path, default: int) -> int:
    """The step in a checkpoint folder's name (ckpt-120, checkpoint-120); else `default`."""
    m = re.search(r"(\d+)$", Path(path).name)
    return int(m.group(1)) if m else default


def trajectory(cfg: Config, data: DataSource, init: str, checkpoints: list[str], reference: str) -> dict:
    """Evaluate `init` (point 0) and `checkpoints` (folders or hub ids, in training order) with FQ against
    `reference`, and summarize them like an unlearning run's own trajectory (AUES, MU95). Each model is
    evaluated by `evaluate` (cached per model), so the numbers are those an `unlearn` run computes."""
    init_ref = content_ref(init, "init")
    ref = content_ref(reference, "reference (eval.reference)")
    ckpts = [content_ref(c, "checkpoints") for c in checkpoints]
    points = [Point.from_metrics(0, evaluate(cfg, data, init_ref, ref)).to_dict()]
    for i, (text, ck) in enumerate(zip(checkpoints, ckpts), 1):
        # eval.full_at=ends: ES alone between the end points, as an unlearn run does
        es_only = cfg.eval.full_at == "ends" and i < len(ckpts)
        met = evaluate(cfg, data, ck, ref, es_only=es_only)
        points.append(Point.from_metrics(step_of(text, i), met, model=text).to_dict())
    summ = summarize_trajectory(points, envelope=cfg.eval.envelope, left_anchor=cfg.eval.left_anchor,
                                mode=cfg.eval.mu95)
    inputs = {"init": init_ref.fingerprint, "checkpoints": [c.fingerprint for c in ckpts],
              "reference": ref.fingerprint, "eval": eval_key(cfg)}
    return {"init": init, "reference": reference, "trajectory": points,
            "aues": summ["aues"], "mu95": summ["mu95"], "mu95_not_reached": summ["mu95_not_reached"],
            "mu95_note": summ["mu95_note"], "inputs": inputs}
