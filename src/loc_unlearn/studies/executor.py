"""Run a study's independent jobs in process or on a cluster through submitit.

`local` runs jobs one after another in this process, or (study.workers) in a pool of worker processes on
the CPU cores; either way the results are then read back from the cached runs in this process. `slurm` submits each job (e.g. seed x method x
region) as one SLURM array task; `debug` uses submitit's in-process debug executor (tests). Jobs only
ever write their own cached run directories, so a failed or preempted job is simply resubmitted and
resumes from its last checkpoint. Results are gathered afterwards by calling the same job function
locally: every stage it touches is complete by then, so it only reads the cached metrics (no pickled
results are trusted for the numbers). Job functions must be module-level (picklable), see common.py.

Preemption and time limits on SLURM: submitit sends SIGUSR2 `study.slurm_signal_delay_s` before the limit
(and schedulers SIGTERM on preemption); every job runs as a `StudyJob`, which stops at the next training
step boundary (stop.py: a checkpoint is written) and then has submitit requeue the same job with the same
arguments, which resumes from that checkpoint.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Callable

from .. import stop
from ..config import Config
from ..errors import Preempted
from ..plugins import load_plugins
from ..utils import apply_threads, available_cpus, log, progress, resolve_device, torch_threads


def _executor(cfg: Config, name: str):
    # Imported here: only the cluster/debug executors need submitit (local runs work without it).
    import submitit

    folder = Path(cfg.runs_dir) / "submitit" / name
    cluster = "debug" if cfg.study.executor == "debug" else "slurm"
    ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    if cluster == "slurm":
        # requeue: submitit requeues a preempted or timed-out job with `scontrol requeue`, which SLURM
        # refuses for a job submitted as not requeueable (some clusters' default)
        params = {"timeout_min": cfg.study.slurm_time_min, "gpus_per_node": cfg.study.slurm_gpus,
                  "slurm_array_parallelism": 64, "slurm_signal_delay_s": cfg.study.slurm_signal_delay_s,
                  "slurm_additional_parameters": {"requeue": True}}
        if cfg.study.slurm_partition:
            params["slurm_partition"] = cfg.study.slurm_partition
        ex.update_parameters(**params)
    return ex


def execute(cfg: Config, fn: Callable[[Config, dict], dict], jobs: list[dict], name: str = "jobs") -> list[dict]:
    """Run `fn(cfg, job)` for every job and return the results in job order."""
    if cfg.study.executor == "local":
        n = local_workers(cfg, len(jobs))
        if n <= 1:
            with torch_threads(cfg.threads):  # a job's threads, as in a worker (study.main_threads is ours)
                return [fn(cfg, j) for j in progress(jobs, desc=name)]
        _run_pool(cfg, fn, jobs, name, n)
        return [fn(cfg, j) for j in jobs]  # every stage is complete: this only reads cached metrics
    ex = _executor(cfg, name)
    submitted = ex.map_array(StudyJob(fn), [cfg] * len(jobs), jobs)
    log(f"{name}: submitted {len(submitted)} jobs through submitit ({cfg.study.executor}); waiting")
    for j in progress(submitted, desc=f"{name} (waiting)"):
        j.result()  # raises if a job failed, with its log path
    # Gather: every stage is complete now, so this only reads cached metrics.
    return [fn(cfg, j) for j in jobs]


def local_workers(cfg: Config, n_jobs: int) -> int:
    """How many processes run a wave of `n_jobs` under the local executor (config study.workers, 0 = one
    per available core / threads). One on a GPU: the jobs would share one device's memory."""
    if n_jobs <= 1 or resolve_device(cfg.device).type != "cpu":
        return 1
    n = cfg.study.workers or max(1, available_cpus() // max(1, cfg.threads or available_cpus()))
    return max(1, min(n, n_jobs))


def _run_pool(cfg: Config, fn: Callable[[Config, dict], dict], jobs: list[dict], name: str, n: int) -> None:
    """Build every job's runs in `n` spawned worker processes. Two jobs that need the same run never
    build it twice: the runs' file locks make the second wait and then reuse it (runs.py). The first
    job that fails stops the pool (jobs not started are cancelled) and its error is raised here."""
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    log(f"{name}: {len(jobs)} jobs in {n} worker processes ({cfg.threads or 'default'} torch threads each)")
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
    with ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker, initargs=(cfg.threads,)) as pool:
        futures = [pool.submit(StudyJob(fn), cfg, j) for j in jobs]
        bar = progress(total=len(futures), desc=name)
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                bar.update(len(done))
                for f in done:
                    if f.exception() is not None:
                        for p in pending:
                            p.cancel()
                        raise f.exception()
        finally:
            bar.close()


def _init_worker(threads: int) -> None:
    # Quiet workers: only the wave's own progress bar (in the parent) is drawn; errors reach the parent.
    os.environ["LOC_UNLEARN_QUIET"] = "1"
    apply_threads(threads)


class StudyJob:
    """`fn(cfg, job)` as a submitit job that is requeued when preempted or out of time.

    submitit requeues a job whose callable has a `checkpoint` method (its helpers.Checkpointable protocol,
    duck-typed here so that local runs need no submitit): it calls it on its signal (SIGUSR2) and submits
    what it returns. That is the same call again: every stage is cached and training resumes from its
    checkpoints. While the job runs, its signal and the stop signals (stop.py: SIGTERM on preemption) stop
    it at the next training step boundary with a checkpoint written; only then is submitit's own handler
    called, which requeues the job and exits."""

    def __init__(self, fn: Callable[[Config, dict], dict]):
        self.fn = fn

    def __call__(self, cfg: Config, job: dict) -> dict:
        load_plugins(getattr(cfg, "plugins", ()))  # a fresh process on the cluster: plug-in methods first
        apply_threads(getattr(cfg, "threads", 0))
        usr = _submitit_signal()
        requeue = signal.getsignal(usr) if usr else None
        try:
            with stop.handling(list(dict.fromkeys([*stop.stop_signals(), *([usr] if usr else [])]))):
                return self.fn(cfg, job)
        except Preempted as e:
            log(f"{e} Requeueing the job through submitit.")
            if callable(requeue):
                requeue(usr, None)  # submitit: calls checkpoint(), requeues, exits
            raise

    def checkpoint(self, cfg: Config, job: dict):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, cfg, job)


def _submitit_signal():
    """The signal submitit's job environment uses for preemption and time-outs (SIGUSR2 unless
    SUBMITIT_PREEMPT_SIGNAL says otherwise), or None outside a submitit job."""
    try:
        from submitit import JobEnvironment
    except ImportError:
        return None
    return JobEnvironment._usr_sig()
