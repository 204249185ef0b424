"""The model stages: theta_p (the preset's base model; tiny: built and pretrained here), and fine-tuning
all parameters on a split: theta_r on the retain split, the full-data model on `full` (docs/studies.md#step-1-retain-model)."""
from __future__ import annotations

import dataclasses
from dataclasses import asdict
from pathlib import Path

from ..config import Config, TrainConfig
from ..data.source import DataSource
from ..data.tofu import load_split
from ..errors import UserError
from ..models.load import build_tiny, load_model, preset_base_path, save_model
from ..runs import Run, cached, wait_for
from ..train import loop  # as a module: tests replace loop.train to prove a complete study trains nothing
from ..utils import device_info, is_main_process, place
from .common import ModelRef, exact_match_rate, ref_of_run
from .data import replay_rows, synthetic_world


def base_model(cfg: Config) -> ModelRef:
    """theta_p: the preset's pretrained model (tiny: built and pretrained here on the world facts)."""
    if cfg.model.path:
        return ModelRef(cfg.model.path, f"model:{cfg.model.path}:{cfg.model.gguf_file}")
    if cfg.model.preset == "tiny":
        return ref_of_run(tiny_base(cfg))
    path = preset_base_path(cfg.model, cfg.runs_dir)
    if path is None:
        raise UserError(f"model preset {cfg.model.preset!r} needs model.path")
    return ModelRef(str(path), f"model:{cfg.model.preset}")


def tiny_base(cfg: Config) -> Run:
    """Tiny Llama + BPE tokenizer trained on the synthetic world, pretrained on its general facts. Its
    input is the synthetic world of `cfg.data` whatever the data source (the tokenizer is trained on it)."""
    world = synthetic_world(cfg)
    t = cfg.model.tiny

    def build(p: Path) -> dict:
        init = p / "init"
        if is_main_process():
            build_tiny(world.path, t, init)
        else:  # under several processes the main one builds the (seeded, identical) start model
            wait_for(init / "config.json")
        model, tok = load_model(str(init))
        place(model, cfg.device)
        rows = load_split(str(world.path), "pretrain")
        tc = TrainConfig(lr=t.pretrain_lr, epochs=t.pretrain_epochs, batch_size=32, weight_decay=0.01,
                         warmup_epochs=1.0, checkpoint_every=0, max_length=min(128, t.max_positions), seed=t.seed)
        model = loop.train(model, tok, rows, [], "learn", tc, p / "train", device=cfg.device).model
        if is_main_process():
            save_model(model, tok, p / "model")
        return {"pretrain_rows": len(rows), **exact_match_rate(model, tok, rows, cfg), **device_info(model)}

    return cached(cfg.runs_dir, "base", {"model": {"preset": "tiny", "tiny": asdict(t)}, "world": world.fingerprint},
                  build, collective=True)


def finetune(cfg: Config, data: DataSource, base: ModelRef | None = None) -> ModelRef:
    """theta_r (split=retain90) or the full-data model (split=full): all parameters, docs/studies.md#step-1-retain-model."""
    split = cfg.finetune.split
    # Read both splits before any training (the base model included): a missing replay file named late, or
    # without its config key, cost a whole base pretraining.
    data.rows(split)
    replay_rows(cfg, data)
    base = base or base_model(cfg)

    def build(p: Path) -> dict:
        model, tok = base.load(cfg)
        rows = data.rows(split)
        replay = replay_rows(cfg, data)
        res = loop.train(model, tok, rows + replay, [], "learn", cfg.finetune.train, p / "train", device=cfg.device)
        model = res.model  # the same object unless a sharding engine (FSDP2, ZeRO-3) rebuilt it
        if is_main_process():
            save_model(model, tok, p / "model")
        out = {"split": split, "rows": len(rows), "replay_rows": len(replay),
               "train_log": res.log[-1:] if res.log else [], **exact_match_rate(model, tok, rows, cfg),
               **device_info(model)}
        if replay:
            out["replay"] = exact_match_rate(model, tok, replay, cfg)
        if split == data.retain_split:  # theta_r: how much of the unseen forget set it reproduces anyway
            out["forget"] = exact_match_rate(model, tok, data.forget_rows(), cfg)
        return out

    key = {"finetune": asdict(cfg.finetune), "base": base.fingerprint, "data": data.fingerprint}
    return ref_of_run(cached(cfg.runs_dir, "finetune", key, build, collective=True))


def finetune_on(cfg: Config, data: DataSource, split: str) -> ModelRef:
    """`finetune` with its split set: "full" (localization benchmark) or the retain split (theta_r)."""
    return finetune(dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, split=split)), data)


def retain_model(cfg: Config, data: DataSource) -> ModelRef:
    """theta_r: fine-tuned on the retain split matching the forget split (docs/studies.md#step-1-retain-model; FQ reference)."""
    return finetune_on(cfg, data, data.retain_split)
