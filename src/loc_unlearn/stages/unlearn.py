"""The unlearning stage (docs/metrics.md#trajectory): masked unlearning from theta_0, every checkpoint evaluated, the
trajectory summarized into AUES and MU95."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..config import Config, method_config
from ..data.source import DataSource
from ..evaluate.record import Point
from ..evaluate.tofu import evaluate_model
from ..evaluate.tradeoff import mix_state_dicts, summarize_trajectory
from ..masks.mask import Mask
from ..registry import OBJECTIVES
from ..models.value_vectors import shape
from ..runs import Run, cached
from ..train import loop
from ..train.objectives import hparams_from
from ..utils import device_info, fault_point, is_main_process, sha256_file, write_json_atomic
from .common import ModelRef
from .data import needs_refusals
from .evaluate import eval_key, evaluate, reference_truth_ratios, step_of


def unlearn(cfg: Config, data: DataSource, model: ModelRef, mask_path: str | Path | None, reference: ModelRef,
            ucfg=None) -> Run:
    """Masked unlearning from `model` (theta_0); evaluates theta_0 and every checkpoint (docs/metrics.md#trajectory)."""
    ucfg = ucfg or method_config(cfg.unlearn, cfg.unlearn.method)
    ref_tr = reference_truth_ratios(cfg, data, reference)
    m0 = evaluate(cfg, data, model, reference)

    def build(p: Path) -> dict:
        m, tok = model.load(cfg)
        mask = Mask.load(mask_path, expect_shape=shape(m)).mask if mask_path else None
        forget = data.forget_rows()
        retain = data.retain_rows()
        hp = hparams_from(ucfg)
        res = loop.train(m, tok, forget, retain, ucfg.method, ucfg.train, p / "train", mask=mask, hparams=hp,
                         idk=data.idk(required=needs_refusals([ucfg.method])),
                         device=cfg.device)
        m = res.model  # theta_K, merged (a new object only under a sharding engine)
        sets = data.eval_sets()
        points = [Point.from_metrics(0, m0)]
        if cfg.eval.curve == "mix":
            # Option curve=mix (docs/metrics.md#mix-curve): theta(a) = (1 - a) theta_0 + a theta_K, a = 0.1 .. 1 (theta_0 is point 0).
            sd0 = {k: v.clone() for k, v in model.load(cfg)[0].state_dict().items()}
            sdk = m.state_dict()  # train() left theta_K (merged) in `m`
            for j in range(1, 11):
                mk, _ = model.load(cfg)
                mk.load_state_dict(mix_state_dicts(sd0, sdk, j / 10))
                met = _eval_point(mk, tok, sets, cfg, ref_tr, last=j == 10)
                points.append(Point.from_metrics(j, met, mix=j / 10))
        else:
            for i, ck in enumerate(res.checkpoints):
                done = Path(ck) / "metrics.json"
                if done.is_file():  # evaluated before an interruption: written atomically, reuse it
                    met = json.loads(done.read_text())
                else:
                    base, _ = model.load(cfg)
                    met = _eval_point(loop.load_checkpoint(base, ck), tok, sets, cfg, ref_tr,
                                      last=i == len(res.checkpoints) - 1)
                    fault_point("evaluate_checkpoint")
                    if is_main_process():
                        write_json_atomic(done, met)
                points.append(Point.from_metrics(step_of(ck, -1), met))
        points = [pt.to_dict() for pt in points]
        summ = summarize_trajectory(points, envelope=cfg.eval.envelope, left_anchor=cfg.eval.left_anchor,
                                    mode=cfg.eval.mu95)
        return {"method": ucfg.method, "mask": str(mask_path or ""), "trajectory": points,
                "aues": summ["aues"], "mu95": summ["mu95"], "mu95_not_reached": summ["mu95_not_reached"],
                "train_truncated": res.truncated, **device_info(m)} | (
                    {"mu95_note": summ["mu95_note"]} if summ["mu95_note"] else {})

    key = {"unlearn": asdict(ucfg) | {"mask": ""}, "eval": eval_key(cfg) | {k: getattr(cfg.eval, k) for k in
                                                             ("curve", "envelope", "left_anchor", "mu95")},
           "model": model.fingerprint, "mask": sha256_file(mask_path) if mask_path else "",
           "reference": reference.fingerprint, "data": data.eval_fingerprint}
    if cfg.eval.full_at != "all":  # only then: run keys from before the option stay as they were
        key["eval"]["full_at"] = cfg.eval.full_at
    if OBJECTIVES.fingerprint(ucfg.method):  # a plug-in: its source file's content names the run too
        key["method_source"] = OBJECTIVES.fingerprint(ucfg.method)
    return cached(cfg.runs_dir, "unlearn", key, build, collective=True)


def _eval_point(model, tok, sets, cfg: Config, ref_tr, last: bool) -> dict:
    """A trajectory point after theta_0: the full evaluation, or ES alone between the end points (eval.full_at)."""
    es_only = cfg.eval.full_at == "ends" and not last
    return evaluate_model(model, tok, sets, cfg.eval, reference_truth_ratios=ref_tr, es_only=es_only)
