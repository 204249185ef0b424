"""The skeleton both studies share (controlled.py, docs/studies.md#controlled-study; localization_benchmark.py, docs/studies.md#localization-benchmark):

    resolve the data once -> build the shared inputs in process -> enumerate the jobs -> execute them
    (executor.py: in process or through submitit) -> gather the results from the cached runs -> write
    the study directory (results.json) and its report.

A study module (controlled.py, localization_benchmark.py) defines `design(cfg) -> Study` naming these
parts, and `run_study(cfg, design(cfg))` here runs any of them. Job functions are module-level functions
`job(cfg, spec) -> dict`, so submitit can pickle them; a job resolves the data itself (it may run in
another process) and only calls stages, which cache their runs: a study reads command -> run_study ->
job -> stages.unlearn from top to bottom.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from .. import stages
from ..config import Config
from ..data.source import DataSource
from ..errors import ConfigError
from ..evaluate.record import Point
from ..evaluate.tofu import mu_sets
from ..plugins import check_methods
from ..registry import LOCALIZERS, METRICS, OBJECTIVES
from ..report import build_report
from ..report.setup import PRESET_MODELS
from ..runs import Run, cached
from ..utils import torch_threads, write_json_atomic
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
    inputs: Callable[[Config, DataSource], object]
    """Builds what every job shares (e.g. theta_r) in this process, before any job runs."""
    waves: list[Wave]
    gather: Callable[[Config, DataSource, dict[str, list[dict]]], dict]
    """(cfg, data, {wave name: job results in job order}) -> the study's fields of results.json; reads cached runs."""
    splits: tuple[str, ...] = ()
    """Data splits the study reads besides forget, retain, replay and the eval sets (checked before any work)."""


def study_key(cfg: Config, name: str, data: DataSource) -> dict:
    """A study's run key: the whole config (less where things are written and where models run) and the data."""
    # `device` is left out entirely (not blanked): where the models ran does not name another study, and
    # a study keyed before the setting existed keeps its key (the demo's cached results stay valid).
    config = {k: v for k, v in asdict(cfg).items() if k != "device"}
    # model.arch (architecture numbers for `loc-unlearn plan`) describes model.path, which is in the key: left
    # out too, so presets that carry it keep the study keys they had without it.
    config["model"] = {k: v for k, v in config["model"].items() if k != "arch"}
    # when SLURM signals a job only decides where it is requeued, and study keys stay as they were before it
    # the worker processes do not change a number (tests/test_workers.py), so they do not name another study
    config["study"] = {k: v for k, v in config["study"].items() if k not in ("slurm_signal_delay_s", "workers")}
    # a local data folder is named by its content (key["data"]), not by its path
    if cfg.data.source != "synthetic" and Path(cfg.data.source).is_dir():
        config["data"] = config["data"] | {"source": "folder"}
    # the resolved choice of Model Utility's sets is in key["data"] (data.eval_fingerprint): auto and the value
    # it resolves to name one study, and study keys from before the setting stay as they were
    config["data"] = {k: v for k, v in config["data"].items() if k != "utility_sets"}
    key = {"study": name, "config": config | {"runs_dir": "", "out": "", "input_model": ""},
           "data": data.eval_fingerprint}
    if cfg.plugins:  # a changed plug-in file is another study (its methods' own runs are keyed by it too)
        key["plugins"] = plugin_fingerprints(cfg)
    return key


def plugin_fingerprints(cfg: Config) -> dict:
    """name -> source fingerprint of every plug-in method the config names (registries.fingerprint)."""
    out = {}
    for reg, names in ((OBJECTIVES, [cfg.unlearn.method, *cfg.study.methods, *cfg.unlearn.per_method]),
                       (LOCALIZERS, [cfg.localize.method, *cfg.study.localizers]), (METRICS, cfg.eval.metrics)):
        for n in names:
            if n in reg and reg.fingerprint(n):
                out[f"{reg.kind}:{n}"] = reg.fingerprint(n)
    return out


def run_study(cfg: Config, study: Study) -> Path:
    """Run (or resume) `study`; returns its directory with results.json, report.html and report.md."""
    t0 = time.time()
    check_methods(cfg)  # every method name and hyperparameter (plug-ins loaded), before any work
    data = stages.data_source(cfg)
    key = study_key(cfg, study.name, data)

    def build(p: Path) -> dict:
        # every split the study reads, and the refusals when one of its methods trains on them, before any work
        stages.check_data(cfg, data, *study.splits, eval_sets=True, methods=cfg.study.methods)
        study.inputs(cfg, data)
        outputs = {w.name: execute(cfg, w.job, w.specs, w.name) for w in study.waves}
        res = {"study": study.name, "preset": cfg.preset, "config": key["config"],
               "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **study.gather(cfg, data, outputs)}
        if cfg.eval.metrics:  # what the report needs to render the extra metrics (it imports no registry)
            res["metrics"] = declared_metrics(cfg)
        res["elapsed_s"] = round(time.time() - t0, 1)
        write_json_atomic(p / "results.json", res)
        build_report(p)
        return {"elapsed_s": res["elapsed_s"], **({"tests": res["tests"]} if "tests" in res else {})}

    # this process's own work (inputs, gather) with study.main_threads; the jobs: executor.execute
    with torch_threads(cfg.study.main_threads or cfg.threads):
        return cached(cfg.runs_dir, f"study-{study.name}", key, build).path


def unlearn_result(job: dict, run: Run) -> dict:
    """One entry of results.json's `runs`: the job's spec and its unlearning run's summary, and each extra
    metric (eval.metrics) at the run's last fully evaluated point under its own name, so the paired tests
    and the report treat it like AUES."""
    met = run.metrics()
    out = {**job, "aues": met["aues"], "mu95": met["mu95"], "mu95_not_reached": met["mu95_not_reached"],
           "trajectory": met["trajectory"], "run_dir": str(run.path)}
    final = next((Point.from_dict(p) for p in reversed(met["trajectory"]) if p.get("metrics")), None)
    for name, value in (final.metrics if final else {}).items():
        if name in out:
            raise ConfigError(f"eval.metrics: a metric named {name!r} would overwrite the run field {name!r} in "
                              f"results.json; register it under another name")
        out[name] = value
    return out


def declared_metrics(cfg: Config) -> list[dict]:
    """results.json `metrics`: each extra metric's name, label, direction and doc (from its registration)."""
    return [{"name": n, "label": METRICS[n].label or n, "higher_is_better": METRICS[n].higher_is_better,
             "doc": METRICS[n].doc} for n in cfg.eval.metrics]


def setup_info(cfg: Config, data: DataSource, model_dir) -> dict:
    """Model and data scale of a study for results.json `setup` (the report's Setup table).

    Architecture, L, d_ff, hidden and the parameter count come from `model_dir`'s config.json, built on
    the meta device (no weights are read, so this is instant for an 8B model too); forget/retain sizes
    from the study's data. Anything unreadable is left out with a `note`, never an exception: the
    report must still be written.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..models.value_vectors import fingerprint

    m = cfg.model
    info: dict = {"model": (m.path + (f" ({m.gguf_file})" if m.gguf_file else "")) if m.path
                  else PRESET_MODELS.get(m.preset, f"{m.preset} preset base model")}
    notes = []
    try:
        hf = AutoConfig.from_pretrained(str(model_dir))
        with torch.device("meta"):
            meta_model = AutoModelForCausalLM.from_config(hf)
        fp = fingerprint(meta_model)
        info.update(architecture=fp["architecture"], n_layers=fp["n_layers"], d_ff=fp["d_ff"], hidden=fp["hidden"],
                    n_params=int(sum(p.numel() for p in meta_model.parameters())))
    except Exception as e:  # noqa: BLE001 - a report field, not a reason to fail the study
        notes.append(f"model scale not read from {model_dir}: {type(e).__name__}: {e}"[:300])
    try:
        info["forget_split"] = cfg.data.forget_split
        info["retain_split"] = data.retain_split
        info["n_forget"] = len(data.forget_rows())
        info["n_retain"] = len(data.retain_rows())
        if cfg.data.source == "synthetic":
            info["n_authors"] = cfg.data.n_authors
        # the sets Model Utility was computed on, as evaluate_model picks them (docs/data.md#evaluation-sets)
        sets = data.eval_sets()
        info["mu_sets"] = [s for s in mu_sets(sets) if s in sets]
    except Exception as e:  # noqa: BLE001
        notes.append(f"data sizes not read: {type(e).__name__}: {e}"[:300])
    if notes:
        info["note"] = "; ".join(notes)
    return info
