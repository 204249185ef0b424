"""`loc-unlearn trajectory init=DIR checkpoints=DIR1,DIR2,... reference=THETA_R`: evaluate checkpoints
saved by any trainer (HF-format folders, or hub ids when online) with this project's evaluation, and
summarize them like an unlearning run's own trajectory (like the paper repo's scripts/eval.sh).

Point 0 is `init` (the model unlearning started from); FQ is taken against `reference` (theta_r).
Each model is evaluated by `stages.evaluate` (cached per model), so the numbers are exactly those an
`unlearn` run computes for the same weights. Writes `trajectory.json` and `trajectory.md` into `out=`
(or a run directory `runs_dir/trajectory/<hash>`) and prints the table.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..config import Config
from ..errors import UserError
from ..utils import sha256_file, sha256_json, write_json_atomic, write_text_atomic

FILES = ("trajectory.json", "trajectory.md")


def _ref(text: str, key: str):
    from ..commands import resolve_model
    from ..stages import ModelRef

    ref = resolve_model(text, key)
    p = Path(ref.path)
    if ref.run is None and p.is_dir():
        # A folder outside the runs dir: keyed by its content, so a rewritten checkpoint is re-evaluated.
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in (".safetensors", ".json", ".model"))
        ref = ModelRef(ref.path, sha256_json({f.name: sha256_file(f) for f in files}))
    return ref


def _step(path: str, i: int) -> int:
    """The step in a checkpoint folder's name (ckpt-120, checkpoint-120); else its position (1, 2, ...)."""
    m = re.search(r"(\d+)$", Path(path).name)
    return int(m.group(1)) if m else i


def trajectory(cfg: Config) -> dict:
    """Evaluate init + checkpoints; {"trajectory": points, "aues", "mu95", "mu95_not_reached", ...}."""
    from .. import stages
    from .tradeoff import summarize_trajectory

    if not cfg.input_model:
        raise UserError("trajectory needs init=DIR (the model unlearning started from: point 0)")
    if not cfg.checkpoints:
        raise UserError("trajectory needs checkpoints=DIR1,DIR2,... (HF-format checkpoint folders, in order)")
    if not cfg.eval.reference:
        raise UserError("trajectory needs reference=THETA_R (the retain model for Forget Quality and MU95)")
    init = _ref(cfg.input_model, "init")
    reference = _ref(cfg.eval.reference, "reference (eval.reference)")
    ckpts = [_ref(c, "checkpoints") for c in cfg.checkpoints]
    points = [stages._point(0, stages.evaluate(cfg, init, reference))]
    for i, (text, ck) in enumerate(zip(cfg.checkpoints, ckpts), 1):
        # eval.full_at=ends: ES alone between the end points, as an unlearn run does
        es_only = cfg.eval.full_at == "ends" and i < len(ckpts)
        points.append(stages._point(_step(text, i), stages.evaluate(cfg, ck, reference, es_only=es_only)) | {"model": text})
    summ = summarize_trajectory(points, envelope=cfg.eval.envelope, left_anchor=cfg.eval.left_anchor,
                                mode=cfg.eval.mu95)
    inputs = {"init": init.fingerprint, "checkpoints": [c.fingerprint for c in ckpts],
              "reference": reference.fingerprint, "eval": stages.eval_key(cfg)}
    return {"init": cfg.input_model, "reference": cfg.eval.reference, "trajectory": points,
            "aues": summ["aues"], "mu95": summ["mu95"], "mu95_not_reached": summ["mu95_not_reached"],
            "mu95_note": summ["mu95_note"], "inputs": inputs}


def markdown(res: dict) -> str:
    fq = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [f"# Trajectory of {res['init']}", "", f"Reference (FQ): {res['reference']}", "",
             "| step | FS | RS | MU | log10 FQ | model |", "|---:|---:|---:|---:|---:|---|"]
    for p in res["trajectory"]:
        mu = "-" if p["MU"] is None else f"{p['MU']:.3f}"  # "-": ES only (eval.full_at=ends)
        lines.append(f"| {p['step']} | {p['FS']:.3f} | {p['RS']:.3f} | {mu} | {fq(p['log10_FQ'])} | "
                     f"{p.get('model', res['init'])} |")
    mu95 = fq(res["mu95"]) + (" (not reached)" if res["mu95_not_reached"] else "")
    lines += ["", f"AUES {res['aues']:.4f}, MU95 {mu95}", ""] + ([res["mu95_note"], ""] if res.get("mu95_note") else [])
    return "\n".join(lines)


def cmd_trajectory(cfg: Config) -> None:
    from ..runs import get_run

    res = trajectory(cfg)
    if cfg.out:
        out = Path(cfg.out)
        if out.exists() and not out.is_dir():
            raise UserError(f"out={cfg.out}: is a file; trajectory writes trajectory.json and trajectory.md into a folder")
    else:
        out = get_run(cfg.runs_dir, "trajectory", res["inputs"]).path
    write_json_atomic(out / FILES[0], res)
    write_text_atomic(out / FILES[1], md := markdown(res))
    print(md)
    print(f"written: {out / FILES[0]}, {out / FILES[1]}")


__all__ = ["cmd_trajectory", "markdown", "trajectory"]
