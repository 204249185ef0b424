"""The stage commands of `loc-unlearn` (cli.py maps command names to them): resolve what the command
line names (model=PATH, out=DIR), call one stage from stages.py, print where its results are.
The study commands live with their studies (studies/), `report` in report/.
"""
from __future__ import annotations

import json
from pathlib import Path

from .config import Config
from .data.synthetic import write_world
from .errors import UserError
from .evaluate.tofu import format_table
from .masks.mask import Mask
from .runs import Run
from .stages import ModelRef, check_data, evaluate, finetune, finetune_on, inject, localize, unlearn, world_args
from .utils import write_json_atomic


def _print_json(title: str, obj) -> None:
    print(f"{title}\n{json.dumps(obj, indent=2, default=str)}")


def model_arg(cfg: Config) -> ModelRef | None:
    """model=PATH on the command line: a run's model folder or any HF folder / hub id."""
    return resolve_model(cfg.input_model, "model") if cfg.input_model else None


def resolve_model(text: str, key: str) -> ModelRef:
    """A model named on the command line under `key` (model=, reference=, checkpoints=): a run directory,
    a run's model folder (both verified against the run's manifest), another local folder or a hub id.
    A path-like name that does not exist is an error at once (never retried as a hub id)."""
    p = Path(text)
    if (p / "manifest.json").is_file() and (p / "model").is_dir():
        p = p / "model"
    if (p.parent / "manifest.json").is_file():
        run = Run(p.parent, "model", {})
        run.verify()
        return ModelRef(str(p), run.fingerprint, run)
    if p.is_dir():
        return ModelRef(str(p), f"model:{text}")
    if not p.exists() and looks_like_path(text):
        raise UserError(f"{key}={text}: no such folder (expected a run directory, a model folder "
                        f"or a hub id like owner/name)")
    if p.is_file():
        raise UserError(f"{key}={text}: is a file; expected a run directory, a model folder or a hub id")
    return ModelRef(text, f"model:{text}")


def looks_like_path(text: str) -> bool:
    """Not a hub id (owner/name): starts with . / ~, has other than exactly one '/', or its first part is
    a local folder (runs/typo: a mistyped run, not the hub user 'runs')."""
    return text.startswith((".", "/", "~")) or text.count("/") != 1 or Path(text).parent.is_dir()


def _reference_arg(cfg: Config) -> ModelRef | None:
    """eval.reference=PATH: the FQ reference model (theta_r), resolved like model=."""
    return resolve_model(cfg.eval.reference, "reference (eval.reference)") if cfg.eval.reference else None


def cmd_data_generate(cfg: Config) -> None:
    if not cfg.out:
        raise UserError("data generate needs out=DIR (the folder to write the TOFU-format files into)")
    out = write_world(cfg.out, **world_args(cfg))
    print(f"wrote the synthetic author world ({cfg.data.n_authors} authors) to {out}")


def cmd_finetune(cfg: Config) -> None:
    ref = finetune(cfg)
    print(f"fine-tuned model: {ref.path}\nmetrics: {ref.run.path / 'metrics.json'}")
    _print_json("summary:", {k: v for k, v in ref.run.metrics().items() if k != "train_log"})


def cmd_inject(cfg: Config) -> None:
    check_data(cfg)
    theta_r = model_arg(cfg) or finetune(cfg)
    ref = inject(cfg, theta_r)
    met = ref.run.metrics()
    print(f"theta_o: {ref.path}\nmask: {ref.run.path / 'mask.safetensors'}")
    print(f"forget ES {met['forget_es']:.3f} vs target {met['target_es']:.3f}: "
          f"{'reached' if met['reached'] else 'NOT reached'}")


def cmd_localize(cfg: Config) -> None:
    model = model_arg(cfg)
    check_data(cfg, *(() if model else ("full",)))
    model = model or finetune_on(cfg, "full")
    path = localize(cfg, model)
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


def cmd_unlearn(cfg: Config) -> None:
    model = model_arg(cfg)
    if model is None:
        raise UserError("unlearn needs model=PATH (e.g. theta_o from `loc-unlearn inject`)")
    check_data(cfg, eval_sets=True)
    theta_r = _reference_arg(cfg) or finetune(cfg)
    run = unlearn(cfg, model, cfg.unlearn.mask or None, theta_r)
    met = run.metrics()
    print(f"run: {run.path}")
    for pt in met["trajectory"]:
        mu = "    -" if pt["MU"] is None else f"{pt['MU']:.3f}"  # "-": ES only (eval.full_at=ends)
        print(f"  step {pt['step']:5d}  FS {pt['FS']:.3f}  RS {pt['RS']:.3f}  MU {mu}  "
              f"log10FQ {pt['log10_FQ'] if pt['log10_FQ'] is None else round(pt['log10_FQ'], 2)}")
    print(f"AUES {met['aues']:.3f}  MU95 {met['mu95']:.2f}{' (not reached)' if met['mu95_not_reached'] else ''}")
    if met.get("mu95_note"):
        print(f"  ({met['mu95_note']})")


def cmd_evaluate(cfg: Config) -> None:
    model = model_arg(cfg)
    if model is None:
        raise UserError("evaluate needs model=PATH")
    met = evaluate(cfg, model, _reference_arg(cfg))
    if cfg.out:
        write_json_atomic(Path(cfg.out) / "metrics.json", met)
        print(f"metrics written to {Path(cfg.out) / 'metrics.json'}")
    print(format_table(met))
