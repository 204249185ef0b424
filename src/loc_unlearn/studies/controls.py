"""The controlled study's positive control (SPEC §11): a comparison where a difference must exist.

Per seed, two edits of theta_o that differ only in WHICH region they touch, like Oracle and Random:

- oracle reset: V_tgt's columns set back to theta_r's values. The injection changed V_tgt only (masked
  training, checked bit for bit), so this removes the injected facts by construction: the model IS
  theta_r again (`tensors_differing_from_theta_r` records 0; `same_as` "theta_r").
- random reset: V_rdm's columns set back to theta_r's values, a no-op (`max_abs_change` records 0.0),
  because the injection never moved V_rdm (`same_as` "theta_o").

Both models go through the study's own evaluation (stages.evaluate, FQ against theta_r) and the FS
values through the same paired test (evaluate.stats.paired_tests) over the same seeds as the Oracle vs
Random comparison. If this difference, the largest any region-restricted edit can make, is not
detected at p < 0.05, the study cannot detect a real localization effect either: it is underpowered
(too few seeds, or an evaluation too noisy). The reset is the ideal region-restricted unlearning step,
so this controls the evaluation and statistics, not the unlearning objectives.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .. import stages
from ..config import REGIONS, Config
from ..evaluate.stats import ALPHA, paired_tests
from ..masks.mask import Mask
from ..models.load import save_model
from ..models.value_vectors import shape, value_matrix
from ..runs import cached
from ..utils import device_info, sha256_file


def reset_region(cfg: Config, theta_o: stages.ModelRef, theta_r: stages.ModelRef,
                 mask_path: Path) -> tuple[stages.ModelRef, dict]:
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
    return stages.ModelRef(path=str(run.path / "model"), fingerprint=run.fingerprint, run=run), diag


def positive_control(cfg: Config, theta_r: stages.ModelRef, preps: list[dict]) -> dict:
    """FS of the oracle-reset and random-reset theta_o per seed, and their paired test (oracle - random;
    FS = 1 - forget ES, so positive = the oracle reset forgot more). `detected` = the paired t-test's
    p < 0.05 in that direction."""
    rows = []
    for pr in preps:
        row = {"seed": pr["seed"]}
        for region in REGIONS:
            ref, diag = reset_region(cfg, pr["theta_o"], theta_r, pr["masks"][region])
            met = stages.evaluate(cfg, ref, theta_r)
            row[region] = {"FS": met["FS"], "RS": met["RS"], "log10_FQ": met.get("log10_FQ"), **diag}
        rows.append(row)
    fs = {r: [row[r]["FS"] for row in rows] for r in REGIONS}
    test = paired_tests(fs["oracle"], fs["random"])
    p = test["p_t"]
    detected = bool(p == p and p < ALPHA and test["mean_diff"] > 0)  # p == p: not nan
    return {"design": "per seed: theta_o with V_tgt (oracle) or V_rdm (random) reset to theta_r; metric FS",
            "seeds": rows, "oracle_fs": fs["oracle"], "random_fs": fs["random"], "test": test,
            "p": p, "mdd": test["mdd"], "detected": detected}
