"""The controlled study's positive control (docs/studies.md#positive-control): a comparison where a difference must exist.

Per seed, two edits of theta_o that differ only in WHICH region they touch, like Oracle and Random
(each a cached stage, stages.reset_region):

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

from .. import stages
from ..config import REGIONS, Config
from ..data.source import DataSource
from ..evaluate.stats import ALPHA, paired_tests


def positive_control(cfg: Config, data: DataSource, theta_r: stages.ModelRef, preps: list[dict]) -> dict:
    """FS of the oracle-reset and random-reset theta_o per seed, and their paired test (oracle - random;
    FS = 1 - forget ES, so positive = the oracle reset forgot more). `detected` = the paired t-test's
    p < 0.05 in that direction."""
    rows = []
    for pr in preps:
        row = {"seed": pr["seed"]}
        for region in REGIONS:
            ref, diag = stages.reset_region(cfg, pr["theta_o"], theta_r, pr["masks"][region])
            met = stages.evaluate(cfg, data, ref, theta_r)
            row[region] = {"FS": met["FS"], "RS": met["RS"], "log10_FQ": met.get("log10_FQ"), **diag}
        rows.append(row)
    fs = {r: [row[r]["FS"] for row in rows] for r in REGIONS}
    test = paired_tests(fs["oracle"], fs["random"])
    p = test["p_t"]
    detected = bool(p == p and p < ALPHA and test["mean_diff"] > 0)  # p == p: not nan
    return {"design": "per seed: theta_o with V_tgt (oracle) or V_rdm (random) reset to theta_r; metric FS",
            "seeds": rows, "oracle_fs": fs["oracle"], "random_fs": fs["random"], "test": test,
            "p": p, "mdd": test["mdd"], "detected": detected}
