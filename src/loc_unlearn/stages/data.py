"""The data stage: the synthetic world (generated once into runs_dir, a cached run) and the resolution
of a config's data into a `DataSource`, done once by a command or study job and passed to every stage."""
from __future__ import annotations

import functools
from dataclasses import asdict
from pathlib import Path

from ..config import Config
from ..data.source import DataSource, folder_fingerprint
from ..data.synthetic import GENERATOR_VERSION, write_world
from ..errors import ConfigError, DataError
from ..registry import OBJECTIVES
from ..runs import Run, cached


def world_args(cfg: Config) -> dict:
    """The `data` fields that define the synthetic world (`write_world`'s arguments)."""
    skip = {"source", "forget_split", "retain_split", "max_eval_rows", "utility_sets"}
    return {k: v for k, v in asdict(cfg.data).items() if k not in skip}


def synthetic_world(cfg: Config) -> Run:
    return _synthetic_world(cfg.runs_dir, tuple(sorted(world_args(cfg).items())))


@functools.lru_cache(maxsize=8)
def _synthetic_world(runs_dir: str, items: tuple) -> Run:
    # Memoized per process: the tiny base model and the data both ask for the world; verify it once.
    d = dict(items)

    def build(p: Path) -> dict:
        write_world(p, **d)
        return {"files": sorted(f.name for f in p.iterdir() if f.is_file())}

    return cached(runs_dir, "data", {"data": d, "generator_version": GENERATOR_VERSION}, build)


def data_source(cfg: Config) -> DataSource:
    """Resolve `cfg.data`: the synthetic world (generated once into runs_dir), a local folder of
    TOFU-named files, or a hub id. Commands and study jobs call this once and pass the result down."""
    d = cfg.data
    if d.source == "synthetic":
        run = synthetic_world(cfg)
        path, fp = str(run.path), run.fingerprint
    elif Path(d.source).is_dir():
        path, fp = str(Path(d.source)), folder_fingerprint(Path(d.source))
    else:
        path, fp = d.source, f"hub:{d.source}"
    return DataSource(path=path, fingerprint=fp, source=d.source, forget_split=d.forget_split,
                      configured_retain_split=d.retain_split, max_eval_rows=d.max_eval_rows,
                      utility_sets=utility_sets(cfg))


def utility_sets(cfg: Config) -> str:
    """`data.utility_sets` resolved to 'world' or 'general' (docs/data.md#evaluation-sets). auto: general with
    synthetic data and a model other than the tiny preset, whose own pretraining is the synthetic world's
    facts; a TOFU folder or hub id keeps TOFU's real-author and world-fact sets."""
    choice = cfg.data.utility_sets
    if choice == "auto":
        return "general" if cfg.data.source == "synthetic" and cfg.model.preset != "tiny" else "world"
    if choice not in ("world", "general"):
        raise ConfigError(f"config key 'data.utility_sets': expected one of ['auto', 'world', 'general'], got {choice!r}")
    return choice


def replay_rows(cfg: Config, data: DataSource) -> list[dict]:
    """The rows of finetune.replay_split ([] when off), with the config key named when they are missing."""
    if not cfg.finetune.replay_split:
        return []
    try:
        return data.rows(cfg.finetune.replay_split)
    except DataError as e:
        raise DataError(f"finetune.replay_split={cfg.finetune.replay_split!r} (rows mixed into fine-tuning to "
                        f"keep general knowledge; set finetune.replay_split= to turn it off): {e}") from None


def needs_refusals(methods) -> bool:
    """Whether one of these unlearning methods trains on refusals (DPO: the objective's needs_idk)."""
    return any(OBJECTIVES.get(m).needs_idk for m in methods)


def check_data(cfg: Config, data: DataSource, *splits: str, eval_sets: bool = False, methods=()) -> None:
    """Read every split a command will use before it does any work, so a broken or missing file is named
    at once, not after hours of training (issue 14): the forget and retain splits, the fine-tuning replay
    split, the DPO refusals (a local folder must hold them when one of `methods` trains on them),
    `splits` (e.g. 'full') and, with `eval_sets`, the evaluation sets (docs/data.md#evaluation-sets)."""
    for split in (data.forget_split, data.retain_split, *splits):
        data.rows(split)
    replay_rows(cfg, data)
    data.idk(required=needs_refusals(methods))
    if eval_sets:
        data.eval_sets()
