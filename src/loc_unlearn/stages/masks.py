"""The mask stage: score value vectors with a localizer and keep the top ones (masks/localize)."""
from __future__ import annotations

import dataclasses
from dataclasses import asdict
from pathlib import Path

from ..config import Config
from ..data.source import DataSource
from ..masks.localize import localize as localize_mask
from ..registry import LOCALIZERS
from ..runs import cached, path_fingerprint
from ..utils import device_info, sha256_file
from .common import ModelRef


def localize(cfg: Config, data: DataSource, model: ModelRef, lcfg=None) -> Path:
    """Mask file for `lcfg` (default cfg.localize) computed on `model` with forget/retain data."""
    lcfg = lcfg or cfg.localize
    src_fp = sha256_file(lcfg.source_mask) if lcfg.source_mask else ""

    def build(p: Path) -> dict:
        m, tok = model.load(cfg)
        mask = localize_mask(lcfg, m, tok, data.forget_rows(), data.retain_rows())
        # The file names its source by content, not by a path that differs between runs dirs.
        for k, fp in (("source_mask", src_fp), ("reference", path_fingerprint(lcfg.reference))):
            if mask.meta.get(k):
                mask.meta[k] = f"sha256:{fp}"
        mask.save(p / "mask.safetensors")
        return {"method": lcfg.method, "ratio": lcfg.ratio, "scope": lcfg.scope,
                "per_layer_counts": mask.per_layer_counts(), **device_info(m)}

    # Paths in keys are replaced by content hashes: the same inputs share a run in any directory.
    key = {"localize": asdict(lcfg) | {"compare": [], "source_mask": "", "reference": path_fingerprint(lcfg.reference)},
           "model": model.fingerprint, "data": data.fingerprint, "source_mask": src_fp}
    if LOCALIZERS.fingerprint(lcfg.method):  # a plug-in: its source file's content names the run too
        key["method_source"] = LOCALIZERS.fingerprint(lcfg.method)
    run = cached(cfg.runs_dir, "localize", key, build)
    return run.path / "mask.safetensors"


def random_mask(cfg: Config, data: DataSource, model: ModelRef, seed: int, ratio: float,
                source_mask: str = "") -> Path:
    """A random mask of `ratio` (or, with `source_mask`, of its size and disjoint from it)."""
    lcfg = dataclasses.replace(cfg.localize, method="random_complement" if source_mask else "random",
                               seed=seed, ratio=ratio, source_mask=source_mask, scope="global")
    return localize(cfg, data, model, lcfg)
