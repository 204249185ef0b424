"""The pipeline commands: one stage each (or one stage and what it needs), plus `trajectory`."""
from __future__ import annotations

import json
from pathlib import Path

from . import PIPELINE, command


def _print_json(title: str, obj) -> None:
    print(f"{title}\n{json.dumps(obj, indent=2, default=str)}")


def _model(cfg):
    """model=PATH on the command line: a run directory, a run's model folder or any HF folder / hub id."""
    from ..stages import optional_model

    return optional_model(cfg.input_model, "model")


def _reference(cfg):
    """eval.reference=PATH: the FQ reference model (theta_r), resolved like model=."""
    from ..stages import optional_model

    return optional_model(cfg.eval.reference, "reference (eval.reference)")


@command("data generate", "write the offline synthetic author world (TOFU format) to out=DIR", ["data"],
         {"n_authors": "data.n_authors", "qa_per_author": "data.qa_per_author", "seed": "data.seed"})
def data_generate(cfg) -> None:
    from ..data.synthetic import write_world
    from ..errors import UserError
    from ..stages import world_args

    if not cfg.out:
        raise UserError("data generate needs out=DIR (the folder to write the TOFU-format files into)")
    out = write_world(cfg.out, **world_args(cfg))
    print(f"wrote the synthetic author world ({cfg.data.n_authors} authors) to {out}")


@command("finetune", "fine-tune all parameters on a split (theta_r: split=retain90; split=full); model=PATH "
         "starts from that model instead of the preset's base", PIPELINE,
         {"split": "finetune.split", "seed": "finetune.train.seed"})
def finetune(cfg) -> None:
    # model= is the model the command starts from, as for every other command (here the base model;
    # model.path sets the preset's base model for every stage instead).
    from .. import stages

    ref = stages.finetune(cfg, stages.data_source(cfg), _model(cfg))
    print(f"fine-tuned model: {ref.path}\nmetrics: {ref.run.path / 'metrics.json'}")
    _print_json("summary:", {k: v for k, v in ref.run.metrics().items() if k != "train_log"})


@command("inject", "inject the forget set into a (random 10%) value-vector region of theta_r -> theta_o",
         PIPELINE + ("inject",), {"mask": "inject.mask", "ratio": "inject.ratio", "seed": "inject.seed"})
def inject(cfg) -> None:
    from .. import stages

    data = stages.data_source(cfg)
    stages.check_data(cfg, data)
    theta_r = _model(cfg) or stages.finetune(cfg, data)
    ref = stages.inject(cfg, data, theta_r)
    met = ref.run.metrics()
    print(f"theta_o: {ref.path}\nmask: {ref.run.path / 'mask.safetensors'}")
    print(f"forget ES {met['forget_es']:.3f} vs target {met['target_es']:.3f}: "
          f"{'reached' if met['reached'] else 'NOT reached'}")


@command("localize", "score value vectors and write a mask", PIPELINE + ("localize",),
         {"method": "localize.method", "ratio": "localize.ratio", "scope": "localize.scope",
          "seed": "localize.seed", "source_mask": "localize.source_mask", "compare": "localize.compare"})
def localize(cfg) -> None:
    from .. import stages
    from ..masks.mask import Mask

    data = stages.data_source(cfg)
    model = _model(cfg)
    stages.check_data(cfg, data, *(() if model else ("full",)))
    model = model or stages.finetune_on(cfg, data, "full")
    path = stages.localize(cfg, data, model)
    mask = Mask.load(path)
    out = path
    if cfg.out:
        out = localize_out(cfg.out)
        mask.save(out)
    summary = {"mask": str(out), "per_layer_counts": mask.per_layer_counts()}
    for other in cfg.localize.compare:
        o = Mask.load(other, expect_shape=tuple(mask.mask.shape))
        pr = mask.precision_recall(o)
        summary[f"vs {other}"] = {"jaccard": mask.jaccard(o), **pr}
    _print_json("localization:", summary)


def localize_out(out: str) -> Path:
    """out= of localize: an existing folder (or a path ending in '/') gets `mask.safetensors` inside it;
    any other path is the mask file itself."""
    p = Path(out)
    return p / "mask.safetensors" if p.is_dir() or out.endswith("/") else p


@command("unlearn", "masked unlearning; saves and evaluates the trajectory", PIPELINE + ("unlearn",),
         {"method": "unlearn.method", "mask": "unlearn.mask", "reference": "eval.reference"})
def unlearn(cfg) -> None:
    from .. import stages
    from ..errors import UserError

    model = _model(cfg)
    if model is None:
        raise UserError("unlearn needs model=PATH (e.g. theta_o from `loc-unlearn inject`)")
    data = stages.data_source(cfg)
    stages.check_data(cfg, data, eval_sets=True, methods=[cfg.unlearn.method])
    theta_r = _reference(cfg) or stages.finetune(cfg, data)
    run = stages.unlearn(cfg, data, model, cfg.unlearn.mask or None, theta_r)
    met = run.metrics()
    print(f"run: {run.path}")
    for pt in met["trajectory"]:
        mu = "    -" if pt["MU"] is None else f"{pt['MU']:.3f}"  # "-": ES only (eval.full_at=ends)
        extra = "".join(f"  {k} {v:.3f}" for k, v in (pt.get("metrics") or {}).items())
        print(f"  step {pt['step']:5d}  FS {pt['FS']:.3f}  RS {pt['RS']:.3f}  MU {mu}  "
              f"log10FQ {pt['log10_FQ'] if pt['log10_FQ'] is None else round(pt['log10_FQ'], 2)}{extra}")
    print(f"AUES {met['aues']:.3f}  MU95 {met['mu95']:.2f}{' (not reached)' if met['mu95_not_reached'] else ''}")
    if met.get("mu95_note"):
        print(f"  ({met['mu95_note']})")


@command("evaluate", "ES/FS/RS, FQ, MU of a model; writes metrics.json", ("data", "model", "eval"),
         {"reference": "eval.reference"})
def evaluate(cfg) -> None:
    from pathlib import Path

    from .. import stages
    from ..errors import UserError
    from ..evaluate.tofu import format_table
    from ..utils import write_json_atomic

    model = _model(cfg)
    if model is None:
        raise UserError("evaluate needs model=PATH")
    met = stages.evaluate(cfg, stages.data_source(cfg), model, _reference(cfg))
    if cfg.out:
        write_json_atomic(Path(cfg.out) / "metrics.json", met)
        print(f"metrics written to {Path(cfg.out) / 'metrics.json'}")
    print(format_table(met))


TRAJECTORY_FILES = ("trajectory.json", "trajectory.md")


@command("trajectory", "evaluate HF checkpoint folders as an unlearning trajectory (init = point 0): AUES, MU95",
         ("data", "model", "eval"),
         {"init": "input_model", "checkpoints": "checkpoints", "reference": "eval.reference"})
def trajectory(cfg) -> None:
    """`loc-unlearn trajectory init=DIR checkpoints=DIR1,DIR2,... reference=THETA_R`: evaluate checkpoints
    saved by any trainer (HF-format folders, or hub ids when online) with this project's evaluation
    (stages.trajectory), and summarize them like an unlearning run's own trajectory. Writes
    trajectory.json and trajectory.md into out= (or a run directory runs_dir/trajectory/<hash>)."""
    from .. import stages
    from ..errors import UserError
    from ..runs import get_run
    from ..utils import write_json_atomic, write_text_atomic

    if not cfg.input_model:
        raise UserError("trajectory needs init=DIR (the model unlearning started from: point 0)")
    if not cfg.checkpoints:
        raise UserError("trajectory needs checkpoints=DIR1,DIR2,... (HF-format checkpoint folders, in order)")
    if not cfg.eval.reference:
        raise UserError("trajectory needs reference=THETA_R (the retain model for Forget Quality and MU95)")
    if cfg.out and Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise UserError(f"out={cfg.out}: is a file; trajectory writes trajectory.json and trajectory.md into a folder")
    res = stages.trajectory(cfg, stages.data_source(cfg), cfg.input_model, cfg.checkpoints, cfg.eval.reference)
    out = Path(cfg.out) if cfg.out else get_run(cfg.runs_dir, "trajectory", res["inputs"]).path
    write_json_atomic(out / TRAJECTORY_FILES[0], res)
    write_text_atomic(out / TRAJECTORY_FILES[1], md := trajectory_markdown(res))
    print(md)
    print(f"written: {out / TRAJECTORY_FILES[0]}, {out / TRAJECTORY_FILES[1]}")


def trajectory_markdown(res: dict) -> str:
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
