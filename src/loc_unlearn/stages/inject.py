"""The injection stages (docs/studies.md#step-2-injection): the forget set learned into a random 10% of value vectors
V_tgt of theta_r (theta_o), the all-parameter injection that sets its target, and one seed's masks."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict
from pathlib import Path

from ..config import REGIONS, Config
from ..data.source import DataSource
from ..masks.diagnostics import norm_ratio
from ..masks.mask import Mask
from ..models.load import save_model
from ..models.value_vectors import shape
from ..runs import cached
from ..train import loop
from ..train.norm_cap import norm_cap
from ..utils import device_info, is_main_process, sha256_file
from .common import ModelRef, exact_match_rate, ref_of_run
from .masks import random_mask


def full_injection_es(cfg: Config, data: DataSource, theta_r: ModelRef) -> float:
    """Forget ES that unmasked (all-parameter) injection reaches with the same recipe: the target's base."""

    def build(p: Path) -> dict:
        model, tok = theta_r.load(cfg)
        forget = data.forget_rows()
        tc = dataclasses.replace(cfg.inject.train, lr=cfg.inject.full_lr or cfg.inject.train.lr)
        model = loop.train(model, tok, forget, data.retain_rows(), "learn_reg", tc, p / "train",
                           hparams={"alpha": cfg.inject.lam}, device=cfg.device).model
        return exact_match_rate(model, tok, forget, cfg) | device_info(model)

    key = {"inject": _inject_key(cfg, max_norm_ratio=0.0) | {"seed": None, "mask": ""}, "theta_r": theta_r.fingerprint,
           "data": data.fingerprint}
    return cached(cfg.runs_dir, "inject_full", key, build, collective=True).metrics()["mean_es"]


def _inject_key(cfg: Config, **replace) -> dict:
    # max_norm_ratio off (0) is left out, so runs cached before the option existed keep their keys;
    # the full injection passes max_norm_ratio=0 (the cap applies to the masked injection only).
    d = asdict(cfg.inject) | replace
    return {k: v for k, v in d.items() if not (k == "max_norm_ratio" and v == 0)}


def inject(cfg: Config, data: DataSource, theta_r: ModelRef, seed: int | None = None) -> ModelRef:
    """theta_o: learn_reg on the forget set into V_tgt only (docs/studies.md#step-2-injection)."""
    seed = cfg.inject.seed if seed is None else seed
    mask_path = Path(cfg.inject.mask) if cfg.inject.mask else random_mask(cfg, data, theta_r, seed, cfg.inject.ratio)

    def build(p: Path) -> dict:
        model, tok = theta_r.load(cfg)
        mask = Mask.load(mask_path, expect_shape=shape(model))
        before = norm_ratio(model, mask.mask)  # ~1 by construction: V_tgt is a random region of theta_r
        forget = data.forget_rows()
        t0 = time.time()
        model = loop.train(model, tok, forget, data.retain_rows(), "learn_reg", cfg.inject.train, p / "train",
                           mask=mask.mask, hparams={"alpha": cfg.inject.lam},
                           post_step=norm_cap(cfg.inject.max_norm_ratio) if cfg.inject.max_norm_ratio else None,
                           device=cfg.device).model
        train_s = time.time() - t0
        if is_main_process():
            mask.save(p / "mask.safetensors")
            save_model(model, tok, p / "model")
        em = exact_match_rate(model, tok, forget, cfg)
        # The target only grades the result, so it is asked for last: a study's worker can train this seed
        # while another builds the all-parameter injection (its run lock makes this wait for it if needed).
        target = cfg.inject.target_es_fraction * full_injection_es(cfg, data, theta_r)
        # Injection fidelity (docs/studies.md#step-2-injection): V_tgt must not be findable by its norm alone (issue 11: ratio <= 1.5).
        return {"seed": seed, "forget_es": em["mean_es"], "exact_greedy": em["exact_greedy"],
                "target_es": target, "reached": em["mean_es"] >= target, "train_s": round(train_s, 1),
                "norm_ratio": {"theta_r": before, "theta_o": norm_ratio(model, mask.mask)}, **device_info(model)}

    key = {"inject": _inject_key(cfg) | {"seed": seed, "mask": ""}, "mask": sha256_file(mask_path),
           "theta_r": theta_r.fingerprint, "data": data.fingerprint}
    return ref_of_run(cached(cfg.runs_dir, "inject", key, build, collective=True))


def prepare_seed(cfg: Config, data: DataSource, theta_r: ModelRef, seed: int) -> dict:
    """One seed of the controlled study (docs/studies.md#controlled-study): theta_o, injected into V_tgt, and the two
    masks keyed by REGIONS: oracle = V_tgt, random = random_complement(V_tgt) of the same size."""
    theta_o = inject(cfg, data, theta_r, seed)
    tgt = theta_o.run.path / "mask.safetensors"
    rdm = random_mask(cfg, data, theta_r, seed + 10_000, cfg.inject.ratio, source_mask=str(tgt))
    return {"seed": seed, "theta_o": theta_o, "masks": dict(zip(REGIONS, (tgt, rdm)))}
