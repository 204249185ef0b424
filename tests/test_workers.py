"""study.workers: a wave's jobs in worker processes give the numbers one process gives (issue 22).

The promise is that results do not depend on how many processes ran the jobs; study.workers is left out of
the study's key on that ground. Both studies pin one torch thread per process (config `threads`), as the
tiny preset does, so the only difference between them is the process each job ran in.
"""
import json

import pytest

from loc_unlearn.config import build_config
from loc_unlearn.errors import ConfigError

# study.main_threads=2: the study's own process builds theta_r with 2 threads, the jobs run with 1 (in this
# process when workers=1, which must switch to 1 thread for them, or in the workers)
SMALL = ["threads=1", "study.main_threads=2", "study.methods=npo", "study.localizers=", "study.output_fit=false"]


def _numbers(d, runs_dir) -> dict:
    """results.json less its timings and creation time (at any depth: some entries copy a run's metrics),
    with the runs dir's path replaced by a placeholder."""
    drop = lambda o: {k: v for k, v in o.items() if k not in ("elapsed_s", "created")}
    return json.loads((d / "results.json").read_text().replace(str(runs_dir), "RUNS"), object_hook=drop)


def test_two_workers_give_the_numbers_of_one_process(tmp_path, mini_cfg, monkeypatch):
    from loc_unlearn.studies import executor
    from loc_unlearn.studies.common import run_study, study_key
    from loc_unlearn import stages
    from loc_unlearn.studies.controlled import design

    pools = []
    real_pool = executor._run_pool
    monkeypatch.setattr(executor, "_run_pool", lambda *a: (pools.append(a[-1]), real_pool(*a))[1])
    out = {}
    for workers in (1, 2):
        cfg = mini_cfg(tmp_path / f"w{workers}", *SMALL, f"study.workers={workers}")
        d = run_study(cfg, design(cfg))
        out[workers] = _numbers(d, tmp_path / f"w{workers}")
    # the pool really ran (4 waves of >= 2 jobs with 2 workers) and one process ran the other study
    assert pools and set(pools) == {2}
    assert out[1]["runs"] and out[1]["tests"]
    # as text: NaN (a t statistic of identical differences) is not equal to itself as a float
    assert json.dumps(out[2], sort_keys=True) == json.dumps(out[1], sort_keys=True)
    c1, c2 = (mini_cfg(tmp_path / "k", *SMALL, f"study.workers={w}") for w in (1, 2))
    data = stages.data_source(c1)
    assert study_key(c1, "controlled", data) == study_key(c2, "controlled", data)


def test_local_workers_rules(monkeypatch):
    from loc_unlearn.studies import executor

    monkeypatch.setattr(executor, "available_cpus", lambda: 8)
    cfg = build_config(overrides=["study.workers=0", "threads=2", "device=cpu"])
    assert executor.local_workers(cfg, 100) == 4  # one per core / threads
    assert executor.local_workers(cfg, 3) == 3  # never more than jobs
    assert executor.local_workers(cfg, 1) == 1
    cfg = build_config(overrides=["study.workers=0", "threads=0", "device=cpu"])  # threads=0: torch's default, all cores
    assert executor.local_workers(cfg, 100) == 1
    cfg = build_config(overrides=["study.workers=3", "device=cpu"])
    assert executor.local_workers(cfg, 100) == 3


@pytest.mark.parametrize("key", ["study.workers=-1", "threads=-2", "study.main_threads=-1"])
def test_negative_workers_or_threads_name_the_key(key):
    with pytest.raises(ConfigError, match=key.split("=")[0]):
        build_config(overrides=[key])


def test_a_failing_job_in_a_worker_raises_its_own_error_here():
    """A job that fails in a worker process stops the wave with that job's error (its type and message),
    not a pool traceback, so the CLI prints it as it would from one process."""
    from helpers import failing_job

    from loc_unlearn.errors import UserError
    from loc_unlearn.studies.executor import execute

    cfg = build_config(overrides=["study.workers=2", "threads=1", "device=cpu"])
    with pytest.raises(UserError, match="job 1: bad input in some file"):
        execute(cfg, failing_job, [{"i": i} for i in range(3)], "failing")
