"""Study jobs on SLURM are requeued when preempted or out of time (issue 23): each job runs as a
StudyJob, which submitit checkpoints (the same call again) and requeues; training stops at a step boundary
with a checkpoint first, so the requeued job resumes and ends with the numbers of an uninterrupted one.
Run here under submitit's LocalExecutor, which requeues like SLURM (SIGUSR2, then a new process)."""
import hashlib
import os
import signal
from pathlib import Path

import pytest

submitit = pytest.importorskip("submitit")

from loc_unlearn.config import TrainConfig  # noqa: E402
from loc_unlearn.studies.executor import StudyJob, _executor  # noqa: E402

TRAIN = TrainConfig(lr=1e-3, epochs=2, batch_size=4, warmup_epochs=0, checkpoint_every=1.0, max_length=64)


def _train_job(cfg: TrainConfig, job: dict) -> dict:
    """A study job in miniature: train a tiny model in job["dir"]; the first attempt receives submitit's
    signal (SIGUSR2, sent before a time limit or on preemption) after job["signal_at"] steps."""
    import torch

    from helpers import make_rows, make_tok, tiny_lm
    from loc_unlearn.train.loop import train

    torch.set_num_threads(1)
    out = Path(job["dir"])
    out.mkdir(parents=True, exist_ok=True)
    steps = [0]

    def post_step(md):
        steps[0] += 1
        if steps[0] == job["signal_at"] and not (out / "signalled").exists():
            (out / "signalled").touch()
            os.kill(os.getpid(), signal.SIGUSR2)

    tok = make_tok()
    model = tiny_lm(tok, d=32)
    res = train(model, tok, make_rows(8), [], "learn", cfg, out / "train", post_step=post_step, device="cpu")
    weights = hashlib.sha256(b"".join(v.numpy().tobytes() for _, v in sorted(res.model.state_dict().items())))
    return {"loss": [r["loss"] for r in res.log], "weights": weights.hexdigest()}


def test_preempted_job_is_requeued_and_resumes(tmp_path, monkeypatch):
    tests = Path(__file__).parent
    # the job process unpickles _train_job by reference: it imports this module and helpers
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tests), str(tests.parent), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("LOC_UNLEARN_QUIET", "0")
    ex = submitit.LocalExecutor(folder=tmp_path / "submitit")
    ex.update_parameters(timeout_min=60)  # well before its time limit: a preemption, not a time-out
    job = ex.submit(StudyJob(_train_job), TRAIN, {"dir": str(tmp_path / "job"), "signal_at": 3})
    got = job.result()
    log = (job.stdout() or "") + (job.stderr() or "")
    assert (tmp_path / "job" / "signalled").exists(), log[-3000:]
    assert "stopped by SIGUSR2" in log and "after step 3/4 of training 'learn'" in log, log[-3000:]
    assert "this job is preempted" in log and "Requeued job" in log and "resuming learn from" in log and "(step 3/4)" in log, log[-3000:]
    assert got == _train_job(TRAIN, {"dir": str(tmp_path / "clean"), "signal_at": 0})


def test_checkpoint_resubmits_the_same_call():
    job = StudyJob(_train_job)
    d = job.checkpoint(TRAIN, {"dir": "x", "signal_at": 1})
    assert isinstance(d, submitit.helpers.DelayedSubmission)
    assert d.function is job and d.args == (TRAIN, {"dir": "x", "signal_at": 1})


def test_slurm_jobs_are_signalled_early_and_requeueable(tmp_path, monkeypatch):
    """The sbatch script asks for submitit's signal study.slurm_signal_delay_s before the time limit and
    marks the job requeueable (SLURM refuses `scontrol requeue` otherwise on some clusters)."""
    from submitit.slurm.slurm import _make_sbatch_string

    from loc_unlearn.config import build_config

    (tmp_path / "bin").mkdir()
    srun = tmp_path / "bin" / "srun"  # submitit's SlurmExecutor looks for it before anything else
    srun.write_text("#!/bin/sh\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    cfg = build_config(overrides=[f"runs_dir={tmp_path}", "study.executor=slurm", "study.slurm_signal_delay_s=300"])
    ex = _executor(cfg, "jobs")
    sbatch = _make_sbatch_string(command="true", folder=tmp_path, **ex._executor.parameters)
    assert "#SBATCH --signal=USR2@300" in sbatch and "#SBATCH --requeue" in sbatch, sbatch
