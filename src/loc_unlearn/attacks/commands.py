"""Commands of the robustness attacks (SPEC §10), for `loc-unlearn attack relearn|quantize` (wired by cli.py).

Both take the attacked model from `model=PATH` (`cfg.input_model`: a run directory, a model folder or a hub
id, resolved like every other command), read the `attack` config section, cache their result as a run
(`runs_dir/attack_relearn/<hash>`, `runs_dir/attack_quantize/<hash>`: keyed by the attack section, the
models' fingerprints, the data and the eval options they use), copy the result JSON to `out=` when given,
and print a small table.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict
from pathlib import Path

from .. import stages
from ..commands import model_arg
from ..config import Config, TrainConfig
from ..errors import UserError
from ..runs import cached
from ..utils import device_info, world_size, write_json_atomic


def _model(cfg: Config, path: str):
    """A ModelRef for `path`, resolved exactly like `model=` (commands.model_arg)."""
    return model_arg(dataclasses.replace(cfg, input_model=path)) if path else None


def qa_per_author(cfg: Config) -> int:
    """Questions per forget author for the probe/relearn split: attack.qa_per_author, else the synthetic
    world's data.qa_per_author, else TOFU's 20 (SPEC §1)."""
    from .relearn import TOFU_QA_PER_AUTHOR

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


def _write_out(cfg: Config, name: str, result: dict) -> None:
    if cfg.out:
        write_json_atomic(Path(cfg.out) / name, result)
        print(f"results written to {Path(cfg.out) / name}")


def run_relearn(cfg: Config, model_ref=None) -> dict:
    """The relearning attack on `model_ref` (default: model=PATH) for every variant in attack.relearn_data;
    cached. Returns {"split": ..., "es_o": ..., "variants": {data: relearn_attack result}}."""
    from .relearn import attack_rows, probe_es, probe_relearn_split, relearn_attack, save_probe_split

    model_ref = model_ref or _model(cfg, cfg.input_model)
    if model_ref is None:
        raise UserError("attack relearn needs model=PATH (an unlearned model: run dir or model folder)")
    theta_o = _model(cfg, cfg.attack.theta_o)
    a = cfg.attack
    for d in a.relearn_data:
        if d not in ("forget_relearn", "retain"):
            raise UserError(f"attack.relearn_data: unknown variant {d!r}; expected forget_relearn and/or retain")
    if world_size() > 1:
        raise UserError("attack relearn runs in a single process; start it without accelerate launch / torchrun")
    data = stages.data_source(cfg)
    relearn_fields = ("schedule", "relearn_data", "warmup_steps", "seed", "keep_checkpoints")
    key = {"attack": {k: getattr(a, k) for k in relearn_fields},
           "train": asdict(attack_train_config(cfg)), "qa_per_author": qa_per_author(cfg),
           "model": model_ref.fingerprint, "theta_o": theta_o.fingerprint if theta_o else "",
           "data": data.fingerprint, "retain_split": data.retain_split, "eval": stages.eval_key(cfg)}

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


def cmd_attack_relearn(cfg: Config) -> None:
    """`loc-unlearn attack relearn model=PATH [attack.theta_o=PATH] [out=DIR]`."""
    from .relearn import format_relearn_table

    res = run_relearn(cfg)
    _write_out(cfg, "relearn.json", res)
    for d, r in res["variants"].items():
        print(format_relearn_table(r))


def run_quantize(cfg: Config, model_ref=None) -> dict:
    """The quantization attack (SPEC §10) on `model_ref` (default: model=PATH) and on attack.theta_o /
    attack.theta_r when given (the same quantization of the references); cached.
    Returns {"models": {name: {"path": ..., "results": quantization_attack result}}, "settings": ...}."""
    from .quantize import quantization_attack

    model_ref = model_ref or _model(cfg, cfg.input_model)
    if model_ref is None:
        raise UserError("attack quantize needs model=PATH (an unlearned model: run dir or model folder)")
    a = cfg.attack
    models = {"model": model_ref}
    for name in ("theta_o", "theta_r"):
        ref = _model(cfg, getattr(a, name))
        if ref is not None:
            models[name] = ref
    bits = [*a.bits, *(["nf4"] if a.nf4 else [])]
    if not bits:
        raise UserError("attack quantize: attack.bits is empty and attack.nf4 is off: nothing to do")
    data = stages.data_source(cfg)
    settings = {"bits": bits, "group_size": a.group_size, "symmetric": a.symmetric, "include": list(a.include)}
    key = {"quantize": settings, "models": {k: v.fingerprint for k, v in models.items()}, "data": data.fingerprint,
           "eval": stages.eval_key(cfg)}

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


def format_quantize_table(res: dict) -> str:
    """A small text table of `run_quantize`'s result: FS and RS per model and setting."""
    s = res["settings"]
    lines = [f"quantization attack (RTN, group {s['group_size']}, {'symmetric' if s['symmetric'] else 'asymmetric'}, "
             f"{'+'.join(s['include'])})", f"{'model':<10} {'bits':>5}  {'FS':>6}  {'RS':>6}"]
    for name, m in res["models"].items():
        for b, r in m["results"].items():
            lines.append(f"{name:<10} {b:>5}  {r['FS']:>6.3f}  {r['RS']:>6.3f}")
    return "\n".join(lines)


def cmd_attack_quantize(cfg: Config) -> None:
    """`loc-unlearn attack quantize model=PATH [attack.theta_o=PATH attack.theta_r=PATH] [out=DIR]`."""
    res = run_quantize(cfg)
    _write_out(cfg, "quantize.json", res)
    print(format_quantize_table(res))
