"""The skeleton both studies share (controlled.py, SPEC §7; localization_benchmark.py, SPEC §8):

    build the shared inputs in process -> enumerate the jobs -> execute them (executor.py: in process
    or through submitit) -> gather the results from the cached runs -> write the study directory
    (results.json) and its report.

A study is a `Study` value naming these parts. Job functions are module-level functions `job(cfg, spec)
-> dict`, so submitit can pickle them, and every job only calls stages (which cache their runs): a
study reads demo -> run_study -> job -> stages.unlearn from top to bottom.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from .. import stages
from ..config import Config
from ..report import build_report
from ..runs import Run, cached
from ..utils import write_json_atomic
from .executor import execute


@dataclass(frozen=True)
class Wave:
    """Independent jobs run together: `job(cfg, spec)` for every spec, through the study's executor.
    Waves run one after another, so a run that several jobs share is built by an earlier wave (or by
    the study's inputs), never by two jobs at once."""
    name: str
    """Progress label, and the key of this wave's results in `gather`'s `outputs`."""
    job: Callable[[Config, dict], dict]
    specs: list[dict]


@dataclass(frozen=True)
class Study:
    name: str
    """'controlled' | 'localization': results.json's `study`, run directory `study-<name>`."""
    inputs: Callable[[Config], object]
    """Builds what every job shares (e.g. theta_r) in this process, before any job runs."""
    waves: list[Wave]
    gather: Callable[[Config, dict[str, list[dict]]], dict]
    """(cfg, {wave name: job results in job order}) -> the study's fields of results.json; reads cached runs."""
    splits: tuple[str, ...] = ()
    """Data splits the study reads besides forget, retain, replay and the eval sets (checked before any work)."""


def study_key(cfg: Config, name: str) -> dict:
    """A study's run key: the whole config (less where things are written and where models run) and the data."""
    # `device` is left out entirely (not blanked): where the models ran does not name another study, and
    # a study keyed before the setting existed keeps its key (the demo's cached results stay valid).
    config = {k: v for k, v in asdict(cfg).items() if k != "device"}
    # model.arch (architecture numbers for `loc-unlearn plan`) describes model.path, which is in the key: left
    # out too, so presets that carry it keep the study keys they had without it.
    config["model"] = {k: v for k, v in config["model"].items() if k != "arch"}
    # when SLURM signals a job only decides where it is requeued, and study keys stay as they were before it
    config["study"] = {k: v for k, v in config["study"].items() if k != "slurm_signal_delay_s"}
    return {"study": name, "config": config | {"runs_dir": "", "out": "", "input_model": ""},
            "data": stages.data_source(cfg).fingerprint}


def run_study(cfg: Config, study: Study) -> Path:
    """Run (or resume) `study`; returns its directory with results.json, report.html and report.md."""
    t0 = time.time()
    key = study_key(cfg, study.name)

    def build(p: Path) -> dict:
        stages.check_data(cfg, *study.splits, eval_sets=True)  # every split the study reads, before any work
        study.inputs(cfg)
        outputs = {w.name: execute(cfg, w.job, w.specs, w.name) for w in study.waves}
        res = {"study": study.name, "preset": cfg.preset, "config": key["config"],
               "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **study.gather(cfg, outputs)}
        res["elapsed_s"] = round(time.time() - t0, 1)
        write_json_atomic(p / "results.json", res)
        build_report(p)
        return {"elapsed_s": res["elapsed_s"], **({"tests": res["tests"]} if "tests" in res else {})}

    return cached(cfg.runs_dir, f"study-{study.name}", key, build).path


def unlearn_result(job: dict, run: Run) -> dict:
    """One entry of results.json's `runs`: the job's spec and its unlearning run's summary."""
    met = run.metrics()
    return {**job, "aues": met["aues"], "mu95": met["mu95"], "mu95_not_reached": met["mu95_not_reached"],
            "trajectory": met["trajectory"], "run_dir": str(run.path)}
