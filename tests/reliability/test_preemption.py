"""SIGTERM and SIGUSR1 (a scheduler's preemption) stop a run with one paragraph saying where it stopped and
where a rerun resumes, exit 128 + signum, and lose nothing: reruns end bit-identical to an uninterrupted
run (issue 23). The signals come from the fault points (LOC_UNLEARN_FAULT=point:n:SIGNAL: the process
signals itself), as the SIGKILL tests' kills do, so each one lands at a known moment."""
import json
import os
import signal

import pytest

from loc_unlearn import stop
from loc_unlearn.cli import main
from loc_unlearn.errors import ConfigError, Preempted

from helpers import MINI, run_cli

EVERY = "finetune.train.checkpoint_every=0.5"  # 14 steps, checkpoints at 4, 7, 10, 14

# (fault, exit status, what the paragraph says, checkpoints on disk afterwards); each run resumes the last
STOPS = [
    ("train_start:1:TERM", 143, ["at step 0/14 of training 'learn'", "before its next step (no checkpoint yet)",
                                 "resume from step 0/14."], set()),
    # mid-step (after the optimizer step, before it is recorded): the step ends and a resume point is written
    ("train_step:2:USR1", 138, ["after step 2/14 of training 'learn'", "(checkpoint ckpt-2 written)",
                                "resume from step 2/14."], {2}),
    # right before a planned checkpoint: that checkpoint, no extra one
    ("train_step:2:TERM", 143, ["after step 4/14", "(checkpoint ckpt-4 written)", "from step 4/14."], {2, 4}),
    # in the middle of writing a checkpoint: the write completes first
    ("checkpoint_save:1:USR1", 138, ["after step 7/14", "(checkpoint ckpt-7 written)", "from step 7/14."], {2, 4, 7}),
    # outside training (the stage's last write): at once, naming the run
    ("before_manifest:1:TERM", 143, ["stopped by SIGTERM while building the finetune run "], {4, 7, 10, 14}),
]


def _finetune(runs_dir, fault, monkeypatch, capsys):
    """The CLI in this process (fast; main() returns the exit status) with the fault point armed afresh."""
    from loc_unlearn import utils

    monkeypatch.setenv("LOC_UNLEARN_FAULT", fault)
    monkeypatch.setattr(utils, "_FAULTS", {})
    status = main(["finetune", *MINI, EVERY, f"runs_dir={runs_dir}"])
    return status, capsys.readouterr().err.strip()


def test_stop_signals_resume_bit_identical(tmp_path, mini_cfg, monkeypatch, capsys):
    from loc_unlearn import stages
    from loc_unlearn.runs import Run
    from loc_unlearn.utils import torch_threads

    ccfg = mini_cfg(tmp_path / "clean", EVERY)
    runs = tmp_path / "stopped"
    with torch_threads(ccfg.threads):  # as the CLI runs it: float results depend on the thread count
        clean = stages.retain_model(ccfg, stages.data_source(ccfg)).run
        stages.tiny_base(mini_cfg(runs))  # data + base model first: the faults hit the finetune stage
    for fault, status, says, ckpts in STOPS:
        if fault.startswith("before_manifest"):  # once in a real process: its exit status, no traceback
            p = run_cli(["finetune", *MINI, EVERY], runs, fault)
            got, err = p.returncode, p.stderr.strip()
        else:
            got, err = _finetune(runs, fault, monkeypatch, capsys)
        assert got == status, (fault, got, err[-2000:])
        assert "Traceback" not in err and err.startswith(f"error: stopped by SIG{fault.split(':')[-1]} "), err
        assert "Completed stages and checkpoints are kept; rerun the same command to resume" in err, err
        assert all(s in err for s in says), (fault, err)
        (run,) = (runs / "finetune").iterdir()
        assert {int(c.name[5:]) for c in (run / "train").glob("ckpt-*")} == ckpts, fault
        assert not run.joinpath("manifest.json").exists()
    assert _finetune(runs, "", monkeypatch, capsys)[0] == 0
    done = Run(run, "finetune", {})
    assert run.name == clean.path.name and done.is_complete()
    # the same files, bit for bit (the resume point ckpt-2 is gone), and the same numbers
    assert done.fingerprint == clean.fingerprint
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (clean.path, run))
    assert {k: v for k, v in m1.items() if k != "elapsed_s"} == {k: v for k, v in m2.items() if k != "elapsed_s"}


def test_which_signals_stop_is_configurable(monkeypatch, capsys):
    assert stop.stop_signals() == [signal.SIGTERM, signal.SIGUSR1]
    assert stop.stop_signals("sigusr2, TERM") == [signal.SIGUSR2, signal.SIGTERM]
    assert stop.stop_signals("none") == []
    with pytest.raises(ConfigError, match="LOC_UNLEARN_STOP_SIGNALS"):
        stop.stop_signals("TERM,KILL")
    monkeypatch.setenv(stop.ENV, "TERM,NOPE")
    assert main(["report", "x"]) == 2
    assert "'NOPE' is not a signal to stop on" in capsys.readouterr().err


def test_the_handler_defers_inside_training_only():
    before = signal.getsignal(signal.SIGUSR2)
    with stop.handling([signal.SIGUSR2]):
        with pytest.raises(Preempted) as e:  # outside training: at once
            os.kill(os.getpid(), signal.SIGUSR2)
        assert e.value.signum == signal.SIGUSR2 and str(e.value).startswith("stopped by SIGUSR2.")
    with stop.handling([signal.SIGUSR2]):
        with pytest.raises(Preempted):
            with stop.deferred():
                os.kill(os.getpid(), signal.SIGUSR2)  # the step goes on ...
                assert stop.requested() == signal.SIGUSR2
                with pytest.raises(Preempted):  # ... unless a second signal comes
                    os.kill(os.getpid(), signal.SIGUSR2)
        # ... and leaving the block with the flag set stops there
    assert signal.getsignal(signal.SIGUSR2) is before and stop.requested() == 0


def test_all_processes_stop_after_the_same_step(tmp_path):
    """Under `accelerate launch` (2 gloo processes, DDP) a signal that reaches one process stops both
    after the same step (the flag is all-reduced at every step boundary): before, the other one went on
    into the next step's collectives and waited there for good."""
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).parent.parent
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(tests.parent / "configs" / "accelerate" / "cpu_2proc.yaml"), str(tests / "stop_worker.py"), str(tmp_path)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "LOC_UNLEARN_QUIET": "1", "OMP_NUM_THREADS": "1"}
    # its own process group: a hang (the failure this test looks for) must not leave the workers behind
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tests.parent,
                         start_new_session=True)
    try:
        _, err = p.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise
    assert p.returncode == 0, err[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:  # 12 rows, global batch 4: 3 steps an epoch, 6 in all, checkpoints at 3 and 6
        assert r["signum"] == signal.SIGTERM and "after step 2/6 of training 'learn'" in r["message"], r
    assert sorted(c.name for c in (tmp_path / "train").glob("ckpt-*")) == ["ckpt-2"]
