"""The robustness-attack stages (docs/attacks.md): the relearning attack and the quantization attack on a
model, each a cached run keyed by the attack settings, the models' fingerprints, the data and the eval
options; and `checkpoint_model`, which materializes a checkpoint of an unlearning run as a model folder
so the attacks can key their runs by its fingerprint. The attack algorithms are in attacks/."""
from __future__ import annotations

import dataclasses
from dataclasses import asdict
from pathlib import Path

from ..attacks.quantize import quantization_attack
from ..attacks.relearn import (RELEARN_DATA, TOFU_QA_PER_AUTHOR, attack_rows, probe_es, probe_relearn_split, relearn_attack,
                               save_probe_split)
from ..config import Config, TrainConfig
from ..data.source import DataSource
from ..errors import UserError
from ..models.load import save_model
from ..runs import Run, cached
from ..train.checkpoint import checkpoints
from ..train.loop import load_checkpoint
from ..utils import device_info, world_size
from .common import ModelRef, optional_model
from .evaluate import eval_key

def qa_per_author(cfg: Config) -> int:
    """Questions per forget author for the probe/relearn split: attack.qa_per_author, else the synthetic
    world's data.qa_per_author, else TOFU's 20 (docs/data.md#tofu-layout)."""
    if cfg.attack.qa_per_author:
        return cfg.attack.qa_per_author
    return cfg.data.qa_per_author if cfg.data.source == "synthetic" else TOFU_QA_PER_AUTHOR


def attack_train_config(cfg: Config) -> TrainConfig:
    """The attacker's recipe: attack.lr / batch_size / max_length (0 = finetune.train's), attack.weight_decay
    and attack.seed, the rest of finetune.train (grad_clip, mixed_precision, micro_batch_size). Epochs,
    checkpoints and warmup are set by `relearn_attack` from the schedule and attack.warmup_steps."""
    a, ft = cfg.attack, cfg.finetune.train
    return dataclasses.replace(ft, lr=a.lr or ft.lr, batch_size=a.batch_size or ft.batch_size,
                               max_length=a.max_length or ft.max_length, weight_decay=a.weight_decay,
                               seed=a.seed, warmup_epochs=0.0, checkpoint_every=0.0, max_steps=0)


def relearn(cfg: Config, data: DataSource, model_ref: ModelRef, theta_o: ModelRef | None = None) -> dict:
    """The relearning attack on `model_ref` for every variant in attack.relearn_data, with ES_o from
    `theta_o` (default: attack.theta_o); cached. Returns {"split": ..., "es_o": ..., "variants": {data: ...}}."""
    theta_o = theta_o or optional_model(cfg.attack.theta_o, "attack.theta_o")
    a = cfg.attack
    for d in a.relearn_data:
        if d not in RELEARN_DATA:
            raise UserError(f"attack.relearn_data: unknown variant {d!r}; expected forget_relearn and/or retain")
    if world_size() > 1:
        raise UserError("attack relearn runs in a single process; start it without accelerate launch / torchrun")
    relearn_fields = ("schedule", "relearn_data", "warmup_steps", "seed", "keep_checkpoints")
    key = {"attack": {k: getattr(a, k) for k in relearn_fields},
           "train": asdict(attack_train_config(cfg)), "qa_per_author": qa_per_author(cfg),
           "model": model_ref.fingerprint, "theta_o": theta_o.fingerprint if theta_o else "",
           "data": data.fingerprint, "retain_split": data.retain_split, "eval": eval_key(cfg)}

    def build(p: Path) -> dict:
        forget = data.forget_rows()
        retain = data.retain_rows()
        sets = {"forget": forget, "retain": data.eval_sets()["retain"]}
        g = qa_per_author(cfg)
        relearn_idx, probe_idx = probe_relearn_split(forget, a.seed, g)
        save_probe_split(p / "split.json", relearn_idx, probe_idx, seed=a.seed, qa_per_author=g, forget_rows=forget)
        es_o = None
        if theta_o is not None:
            mo, tok_o = theta_o.load(cfg)  # on cfg.device (ModelRef.load -> utils.place)
            es_o = probe_es(mo, tok_o, forget, probe_idx, cfg.eval.batch_size, cfg.eval.es_floor)
            del mo
        # On cfg.device (ModelRef.load), where train(device=cfg.device) keeps it: k = 0 is measured there too.
        m, tok = model_ref.load(cfg)
        out = {"model": model_ref.path, "theta_o": theta_o.path if theta_o else "", "es_o": es_o,
               "split": {"seed": a.seed, "qa_per_author": g, "n_relearn": len(relearn_idx), "n_probe": len(probe_idx)},
               "variants": {}, **device_info(m)}
        for d in a.relearn_data:
            rows = attack_rows(d, forget, retain, relearn_idx, a.seed)
            out["variants"][d] = relearn_attack(
                m, tok, rows, sets, probe_idx, out_dir=p / d, schedule=a.schedule, train_cfg=attack_train_config(cfg),
                es_o=es_o, data=d, warmup_steps=a.warmup_steps, eval_batch_size=cfg.eval.batch_size,
                es_floor=cfg.eval.es_floor, restore=True, keep_checkpoints=a.keep_checkpoints, device=cfg.device)
        return out

    return cached(cfg.runs_dir, "attack_relearn", key, build).metrics()


def quantize(cfg: Config, data: DataSource, model_ref: ModelRef, references: dict[str, ModelRef] | None = None) -> dict:
    """The quantization attack (docs/attacks.md#quantization-attack) on `model_ref` and on the `references` (default: attack.theta_o /
    attack.theta_r when set: the same quantization of the references); cached.
    Returns {"models": {name: {"path": ..., "results": quantization_attack result}}, "settings": ...}."""
    a = cfg.attack
    if references is None:
        references = {name: ref for name in ("theta_o", "theta_r")
                      if (ref := optional_model(getattr(a, name), f"attack.{name}")) is not None}
    models = {"model": model_ref, **references}
    bits = [*a.bits, *(["nf4"] if a.nf4 else [])]
    if not bits:
        raise UserError("attack quantize: attack.bits is empty and attack.nf4 is off: nothing to do")
    settings = {"bits": bits, "group_size": a.group_size, "symmetric": a.symmetric, "include": list(a.include)}
    key = {"quantize": settings, "models": {k: v.fingerprint for k, v in models.items()}, "data": data.fingerprint,
           "eval": eval_key(cfg)}

    def build(p: Path) -> dict:
        sets = data.eval_sets()
        sets = {"forget": sets["forget"], "retain": sets["retain"]}
        out = {"settings": settings, "models": {}}
        for name, ref in models.items():
            m, tok = ref.load(cfg)  # on cfg.device (ModelRef.load): NF4 needs the GPU; RTN runs anywhere
            res = quantization_attack(m, tok, sets, bits=bits, group_size=a.group_size, symmetric=a.symmetric,
                                      include=a.include, batch_size=cfg.eval.batch_size, es_floor=cfg.eval.es_floor)
            out["models"][name] = {"path": ref.path, "results": res}
            out |= device_info(m)  # every model is placed by the same setting: one device and dtype
            del m
        return out

    return cached(cfg.runs_dir, "attack_quantize", key, build).metrics()


def checkpoint_model(cfg: Config, run: Run, theta_0: ModelRef, step: int) -> ModelRef:
    """Checkpoint `step` of the unlearning run `run` (trained from `theta_0`) as a model folder: theta_0 +
    the checkpoint's delta (train.loop.load_checkpoint), saved by models.load.save_model."""
    found = dict(checkpoints(run.path / "train"))
    if step not in found:
        raise UserError(f"{run.path}: no checkpoint ckpt-{step} under train/ (have {sorted(found)}); "
                        f"delete the unlearn run to recompute it")

    def build(p: Path) -> dict:
        m, tok = theta_0.load(cfg)
        save_model(load_checkpoint(m, found[step]), tok, p / "model")
        return {"unlearn_run": str(run.path), "step": step}

    key = {"unlearn": run.fingerprint, "step": step, "theta_0": theta_0.fingerprint}
    out = cached(cfg.runs_dir, "checkpoint_model", key, build)
    return ModelRef(path=str(out.path / "model"), fingerprint=out.fingerprint, run=out)
