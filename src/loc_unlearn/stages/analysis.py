"""The analysis stages of the controlled study: the per-layer output fit (the paper's Figure 1; docs/studies.md#output-fit)
and the positive control's region reset (docs/studies.md#positive-control; studies/controlled.py explains the design)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..config import Config
from ..data.source import DataSource
from ..evaluate.output_fit import output_fit as fit_outputs
from ..evaluate.tofu import evaluate_model
from ..masks.mask import Mask
from ..models.load import save_model
from ..models.value_vectors import shape, value_matrix
from ..runs import cached
from ..utils import device_info, save_safetensors_atomic, sha256_file
from .common import ModelRef
from .evaluate import eval_key


def _fs_rs(model, tokenizer, data: DataSource, cfg: Config) -> dict:
    """FS on the forget eval set and RS on the retain eval set (docs/metrics.md#forget-and-retain-scores-fs-rs), by the evaluation every other
    model gets; FS/RS need only the one-pass ES, so without generation (ROUGE)."""
    sets = data.eval_sets()
    met = evaluate_model(model, tokenizer, {k: sets[k] for k in ("forget", "retain")},
                         dataclasses.replace(cfg.eval, rouge=False))
    return {"FS": met["FS"], "RS": met["RS"]}


def output_fit(cfg: Config, data: DataSource, theta_r: ModelRef, prep: dict) -> dict:
    """Cached output-fit analysis (docs/studies.md#output-fit) for one seed (`prep` = inject.prepare_seed): fit the random region to
    theta_o's output change per layer (evaluate/output_fit.py), then evaluate the stitched model
    theta_r + Delta_R next to theta_o and theta_r."""
    theta_o, masks = prep["theta_o"], prep["masks"]

    def build(p: Path) -> dict:
        # Both on cfg.device (ModelRef.load); the stitched model is a deepcopy of m_r, so it runs there too.
        m_o, tok = theta_o.load(cfg)
        m_r, _ = theta_r.load(cfg)
        tgt, reg = Mask.load(masks["oracle"]), Mask.load(masks["random"])
        per_layer, stitched = fit_outputs(m_o, m_r, tokenizer=tok, forget_rows=data.forget_rows(), tgt_mask=tgt,
                                          region_mask=reg, batch_size=cfg.eval.batch_size,
                                          max_length=cfg.inject.train.max_length)
        # Keep Delta_R (small) rather than a whole stitched model.
        deltas = {f"layer{l}": value_matrix(stitched, l)[:, reg.mask[l]] - value_matrix(m_r, l)[:, reg.mask[l]]
                  for l in range(reg.mask.shape[0])}
        save_safetensors_atomic(deltas, p / "delta_R.safetensors")
        return {"seed": prep["seed"], "per_layer": per_layer, "stitched": _fs_rs(stitched, tok, data, cfg),
                "theta_o": _fs_rs(m_o, tok, data, cfg), "theta_r": _fs_rs(m_r, tok, data, cfg), **device_info(m_o)}

    key = {"output_fit": True, "theta_o": theta_o.fingerprint, "theta_r": theta_r.fingerprint,
           "tgt": sha256_file(masks["oracle"]), "region": sha256_file(masks["random"]),
           "eval": eval_key(cfg), "data": data.fingerprint}
    met = cached(cfg.runs_dir, "output_fit", key, build).metrics()
    return {k: met[k] for k in ("seed", "per_layer", "stitched", "theta_o", "theta_r")}


def reset_region(cfg: Config, theta_o: ModelRef, theta_r: ModelRef, mask_path: Path) -> tuple[ModelRef, dict]:
    """Cached: theta_o with the columns of `mask_path` copied from theta_r, and what the reset changed
    (`max_abs_change`, `tensors_differing_from_theta_r`, `same_as`: theta_r | theta_o | '')."""

    def build(p: Path) -> dict:
        model, tok = theta_o.load(cfg)  # both placed on cfg.device (ModelRef.load): compared column by column
        ref, _ = theta_r.load(cfg)
        mask = Mask.load(mask_path, expect_shape=shape(model)).mask
        change = 0.0
        with torch.no_grad():
            for l in range(shape(model)[0]):
                w, w_r = value_matrix(model, l), value_matrix(ref, l)
                idx = mask[l].nonzero().flatten()
                if len(idx):
                    change = max(change, float((w[:, idx] - w_r[:, idx]).abs().max()))
                    w[:, idx] = w_r[:, idx]
        sd_r = ref.state_dict()
        differing = sum(not torch.equal(v, sd_r[k]) for k, v in model.state_dict().items())
        # oracle: change > 0 and no tensor differs (theta_r again); random: change 0 (theta_o as it was).
        # A model identical to one we have is not written again (a paper-size model is 16 GB): its
        # cached evaluation is the evaluation of these weights.
        same = "theta_r" if differing == 0 else "theta_o" if change == 0.0 else ""
        if not same:
            save_model(model, tok, p / "model")
        return {"max_abs_change": change, "tensors_differing_from_theta_r": int(differing), "same_as": same,
                **device_info(model)}

    key = {"theta_o": theta_o.fingerprint, "theta_r": theta_r.fingerprint, "mask": sha256_file(mask_path)}
    run = cached(cfg.runs_dir, "control_reset", key, build)
    diag = run.metrics()
    if diag["same_as"]:
        return (theta_r if diag["same_as"] == "theta_r" else theta_o), diag
    return ModelRef(path=str(run.path / "model"), fingerprint=run.fingerprint, run=run), diag
