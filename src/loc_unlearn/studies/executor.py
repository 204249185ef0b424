"""Run a study's independent jobs in process or on a cluster through submitit.

`local` runs jobs one after another in this process. `slurm` submits each job (e.g. seed x method x
region) as one SLURM array task; `debug` uses submitit's in-process debug executor (tests). Jobs only
ever write their own cached run directories, so a failed or preempted job is simply resubmitted and
resumes from its last checkpoint. Results are gathered afterwards by calling the same job function
locally: every stage it touches is complete by then, so it only reads the cached metrics (no pickled
results are trusted for the numbers). Job functions must be module-level (picklable), see common.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..config import Config
from ..utils import log, progress


def _executor(cfg: Config, name: str):
    # Imported here: only the cluster/debug executors need submitit (local runs work without it).
    import submitit

    folder = Path(cfg.runs_dir) / "submitit" / name
    cluster = "debug" if cfg.study.executor == "debug" else "slurm"
    ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    if cluster == "slurm":
        params = {"timeout_min": cfg.study.slurm_time_min, "gpus_per_node": cfg.study.slurm_gpus,
                  "slurm_array_parallelism": 64}
        if cfg.study.slurm_partition:
            params["slurm_partition"] = cfg.study.slurm_partition
        ex.update_parameters(**params)
    return ex


def execute(cfg: Config, fn: Callable[[Config, dict], dict], jobs: list[dict], name: str = "jobs") -> list[dict]:
    """Run `fn(cfg, job)` for every job and return the results in job order."""
    if cfg.study.executor == "local":
        return [fn(cfg, j) for j in progress(jobs, desc=name)]
    ex = _executor(cfg, name)
    submitted = ex.map_array(fn, [cfg] * len(jobs), jobs)
    log(f"{name}: submitted {len(submitted)} jobs through submitit ({cfg.study.executor}); waiting")
    for j in progress(submitted, desc=f"{name} (waiting)"):
        j.result()  # raises if a job failed, with its log path
    # Gather: every stage is complete now, so this only reads cached metrics.
    return [fn(cfg, j) for j in jobs]
