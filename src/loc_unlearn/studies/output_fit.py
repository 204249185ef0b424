"""The output-reproduction analysis (the paper's Figure 1; SPEC §9) as a cached stage of the controlled
study: for one seed, fit the random region to theta_o's MLP output change per layer (the math is in
evaluate/output_fit.py) and evaluate the stitched model theta_r + Delta_R next to theta_o and theta_r.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .. import stages
from ..config import Config
from ..evaluate.output_fit import RIDGE, fit_region, output_fit  # noqa: F401  (RIDGE, fit_region: re-exported)
from ..evaluate.tofu import evaluate_model
from ..masks.mask import Mask
from ..models.value_vectors import value_matrix
from ..runs import cached
from ..utils import device_info, save_safetensors_atomic, sha256_file


def _fs_rs(model, tokenizer, data: stages.DataSource, cfg: Config) -> dict:
    """FS on the forget eval set and RS on the retain eval set (SPEC §2), by the evaluation every other
    model gets; FS/RS need only the one-pass ES, so without generation (ROUGE)."""
    sets = data.eval_sets()
    met = evaluate_model(model, tokenizer, {k: sets[k] for k in ("forget", "retain")},
                         dataclasses.replace(cfg.eval, rouge=False))
    return {"FS": met["FS"], "RS": met["RS"]}


def run_output_fit(cfg: Config, theta_r: stages.ModelRef, prep: dict) -> dict:
    """Cached SPEC §9 analysis for one seed (`prep` = stages.prepare_seed): fit the random region to
    theta_o's output change per layer, then evaluate the stitched model theta_r + Delta_R."""
    theta_o, masks = prep["theta_o"], prep["masks"]
    data = stages.data_source(cfg)

    def build(p: Path) -> dict:
        # Both on cfg.device (ModelRef.load); the stitched model is a deepcopy of m_r, so it runs there too.
        m_o, tok = theta_o.load(cfg)
        m_r, _ = theta_r.load(cfg)
        tgt, reg = Mask.load(masks["oracle"]), Mask.load(masks["random"])
        per_layer, stitched = output_fit(m_o, m_r, tokenizer=tok, forget_rows=data.forget_rows(), tgt_mask=tgt,
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
           "eval": stages.eval_key(cfg), "data": data.fingerprint}
    met = cached(cfg.runs_dir, "output_fit", key, build).metrics()
    return {k: met[k] for k in ("seed", "per_layer", "stitched", "theta_o", "theta_r")}


def cmd_study(cfg: Config) -> None:
    """`loc-unlearn study output_fit`: theta_r -> theta_o (seed inject.seed) -> the per-layer fit."""
    theta_r = stages.retain_model(cfg)
    res = run_output_fit(cfg, theta_r, stages.prepare_seed(cfg, theta_r, cfg.inject.seed))
    print(f"{'layer':>5} {'|R|':>6} {'tokens':>7} {'residual':>9}")
    for row in res["per_layer"]:
        print(f"{row['layer']:>5} {row['k']:>6} {row['n_tokens']:>7} {row['residual']:>9.3f}")
    for name in ("theta_r", "theta_o", "stitched"):
        print(f"{name:9s} FS {res[name]['FS']:.3f}  RS {res[name]['RS']:.3f}")
