"""Robustness attacks inside the studies (docs/attacks.md#attacks-in-the-studies): relearning and RTN quantization of every unlearned model.

For each unlearning run of a study (`study.robustness` != off) two of its models are attacked: the FINAL
checkpoint and the MU95 checkpoint (`mu95_checkpoint`). A checkpoint is first materialized as a model
folder (theta_0 + the checkpoint's delta) by the cached stage `stages.checkpoint_model`, so it has a fingerprint;
the attacks are the cached runs of `stages.relearn` / `stages.quantize` keyed by it. theta_0 of
the study (theta_o in the controlled study, the full-data model in the localization benchmark) gives ES_o
of R(k); theta_0 and theta_r quantized the same way are the quantization references, run once per model
(`reference_rows`), not once per unlearning run.

Rows (results.json `robustness.runs`) hold the study's identifying fields (seed, method, region or
localizer), `checkpoint` ('final' | 'mu95'), its step, the ES values R(k) is computed from, and flat
metric fields (`metric_names`) that `evaluate.stats.compare_groups` pairs by seed:
`R_<variant>_k<k>` (None where R is undefined), `FS_before`, `FS_<bits>bit`, `RS_before`, `RS_<bits>bit`.
The probe/relearn split uses `attack.seed` for every study seed, so all models are probed on one half.
"""
from __future__ import annotations

import dataclasses

from .. import stages
from ..config import Config
from ..data.source import DataSource
from ..errors import UserError
from ..runs import Run
from ..train.checkpoint import checkpoints
from ..utils import world_size

CHECKPOINTS = ("final", "mu95")
"""Which checkpoints of every unlearning run `study.robustness=full` attacks (`reduced`: the final one)."""
REDUCED = {"schedule": [0, 5, 20], "relearn_data": ["forget_relearn"], "bits": [4, 8], "nf4": False}
"""`study.robustness=reduced`: these replace the attack section's fields (the tiny demo's setting)."""


def attacked_checkpoints(cfg: Config) -> tuple[str, ...]:
    """The checkpoints attacked: both under 'full'; the final one under 'reduced' (the tiny demo), which
    halves the attacks' cost (issue 11: the demo in 10 minutes) and keeps the 'from an unlearned model' of docs/attacks.md#relearning-attack."""
    return CHECKPOINTS if cfg.study.robustness == "full" else CHECKPOINTS[:1]


def enabled(cfg: Config) -> bool:
    return cfg.study.robustness != "off"


def attack_config(cfg: Config) -> Config:
    """`cfg` with the attack section the study uses: REDUCED applied for 'reduced', as configured for 'full';
    attack.theta_o / theta_r cleared (the study passes its own references)."""
    if world_size() > 1:
        raise UserError(f"study.robustness={cfg.study.robustness}: the attacks run in a single process; set "
                        "study.robustness=off under accelerate launch / torchrun, or run the study without them")
    over = REDUCED if cfg.study.robustness == "reduced" else {}
    return dataclasses.replace(cfg, attack=dataclasses.replace(cfg.attack, theta_o="", theta_r="", **over))


def settings(cfg: Config) -> dict:
    a = attack_config(cfg).attack
    return {"level": cfg.study.robustness, "schedule": sorted({0, *a.schedule}), "relearn_data": list(a.relearn_data),
            "bits": [str(b) for b in [*a.bits, *(["nf4"] if a.nf4 else [])]], "group_size": a.group_size,
            "symmetric": a.symmetric, "include": list(a.include), "split_seed": a.seed, "checkpoints": list(attacked_checkpoints(cfg))}


def metric_names(sett: dict) -> list[dict]:
    """The flat metrics of a row, each {metric, kind: recovery|quantize, variant/k or bits}, in table order."""
    out = [{"metric": f"R_{v}_k{k}", "kind": "recovery", "variant": v, "k": k}
           for v in sett["relearn_data"] for k in sett["schedule"] if k > 0]
    return out + [{"metric": f"FS_{b}bit" if b != "nf4" else "FS_nf4", "kind": "quantize", "bits": b}
                  for b in sett["bits"]]


# ----------------------------------------------------------------------------- which checkpoint


def mu95_checkpoint(trajectory: list[dict]) -> dict:
    """The MU95 checkpoint of an unlearning trajectory (docs/metrics.md#mu95): {index, step, reached}.

    MU0 = MU of point 0 (theta_0); points 1.. are the saved checkpoints in step order. MU95 (docs/metrics.md#mu95)
    interpolates between the last point with MU >= 0.95 MU0 and the FIRST point j >= 1 with
    MU_j < 0.95 MU0, so the crossing lies in (step_{j-1}, step_j]: checkpoint j, the nearest saved
    checkpoint at or after the crossing, is selected (reached = True). If MU never falls below 0.95 MU0
    (MU95 flagged not_reached) it is the final checkpoint (reached = False). Raises UserError when the
    trajectory has no checkpoint after theta_0.
    """
    if len(trajectory) < 2:
        raise UserError("MU95 checkpoint: the trajectory has no checkpoint after theta_0 (unlearn.train.checkpoint_every)")
    thr = 0.95 * float(trajectory[0]["MU"])
    # Points evaluated for ES alone (eval.full_at=ends) have no MU: MU95 is taken over the others.
    below = [j for j in range(1, len(trajectory)) if trajectory[j]["MU"] is not None and float(trajectory[j]["MU"]) < thr]
    j = below[0] if below else len(trajectory) - 1
    return {"index": j, "step": int(trajectory[j]["step"]), "reached": bool(below)}


def checkpoint_steps(trajectory: list[dict], saved: list[int]) -> dict[str, dict]:
    """{'final': {step}, 'mu95': {step, reached}} of one unlearning run; `saved` = its checkpoint steps.
    A `curve=mix` trajectory's points are mixed models, not checkpoints: both are then the final
    checkpoint (reached None: not determined)."""
    if any("mix" in p for p in trajectory):
        return {"final": {"step": max(saved)}, "mu95": {"step": max(saved), "reached": None}}
    sel = mu95_checkpoint(trajectory)
    return {"final": {"step": int(trajectory[-1]["step"])}, "mu95": {"step": sel["step"], "reached": sel["reached"]}}


# ----------------------------------------------------------------------------- the attacks


def _quant_fields(q: dict) -> dict:
    out = {"FS_before": q["none"]["FS"], "RS_before": q["none"]["RS"]}
    for b, r in q.items():
        if b != "none":
            suffix = "nf4" if b == "nf4" else f"{b}bit"
            out |= {f"FS_{suffix}": r["FS"], f"RS_{suffix}": r["RS"]}
    return out


def quantize_rows(cfg: Config, data: DataSource, model: stages.ModelRef) -> dict:
    """{FS_before, RS_before, FS_<b>bit, RS_<b>bit, ...} of `model` (the cached stages.quantize)."""
    return _quant_fields(stages.quantize(attack_config(cfg), data, model, {})["models"]["model"]["results"])


def attack_model(cfg: Config, data: DataSource, model: stages.ModelRef, theta_o: stages.ModelRef) -> dict:
    """Relearning (ES_o from `theta_o`) and quantization of one model; both cached. The row fields of
    the module docstring (without the identifying ones)."""
    rel = stages.relearn(attack_config(cfg), data, model, theta_o)
    row = {"es_o": rel["es_o"], "relearn": {}}
    for v, r in rel["variants"].items():
        row["relearn"][v] = {"es_u": r["es_u"], "recovery_defined": r["recovery_defined"],
                             "points": [{"k": p["k"], "probe_es": p["probe_es"], "retain_es": p.get("retain_es"),
                                         "recovery": p["recovery"]} for p in r["points"]]}
        for p in r["points"]:
            if p["k"] > 0:
                row[f"R_{v}_k{p['k']}"] = p["recovery"]
    return row | quantize_rows(cfg, data, model)


def attack_unlearned(cfg: Config, data: DataSource, ident: dict, run: Run, theta_0: stages.ModelRef) -> list[dict]:
    """One row per attacked checkpoint (attacked_checkpoints) of the unlearning run `run` (from `theta_0`,
    which is also ES_o's model). The final and MU95 checkpoints may be one step: then one model, attacked
    once (cached)."""
    traj = run.metrics()["trajectory"]
    rows, names = [], attacked_checkpoints(cfg)
    for name, sel in checkpoint_steps(traj, [s for s, _ in checkpoints(run.path / "train")]).items():
        if name not in names:
            continue
        model = stages.checkpoint_model(cfg, run, theta_0, sel["step"])
        rows.append({**ident, "checkpoint": name, "step": sel["step"], "mu95_reached": sel.get("reached"),
                     "model_dir": model.path, **attack_model(cfg, data, model, theta_0)})
    return rows


def reference_row(cfg: Config, data: DataSource, name: str, model: stages.ModelRef, **ident) -> dict:
    """The quantization reference `name` (theta_o of a seed, theta_r, the full-data model)."""
    return {"model": name, **ident, "path": model.path, **quantize_rows(cfg, data, model)}


def section(cfg: Config, rows: list[dict], references: list[dict], tests: list[dict] | None = None) -> dict:
    """results.json `robustness`: settings, metrics, runs, references (and the paired tests, controlled)."""
    sett = settings(cfg)
    out = {"settings": sett, "metrics": metric_names(sett), "runs": rows, "references": references}
    if tests is not None:
        out["tests"] = tests
    return out


def paired_tests(rows: list[dict], methods: list[str], sett: dict) -> list[dict]:
    """Oracle vs Random, paired by seed (docs/statistics.md#pairing), per checkpoint x method x metric
    (R(k) per variant and k, post-quantization FS per bits): evaluate.stats.compare_groups."""
    from ..evaluate.stats import compare_groups

    out = []
    for ck in sett.get("checkpoints", CHECKPOINTS):
        sel = [r for r in rows if r["checkpoint"] == ck]
        for m in methods:
            for spec in metric_names(sett):
                out.append({"checkpoint": ck, **{k: v for k, v in spec.items() if k != "metric"},
                            **compare_groups(sel, m, spec["metric"])})
    return out
