"""User mistakes give one paragraph naming the key/file (issue 14), and small fixes: umask-respecting
file modes, a message while waiting for another process's run lock."""
import fcntl
import os
import stat
import threading
import time

import pytest

from loc_unlearn.cli import main


def run_cli(capsys, *args):
    rc = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, err


def test_missing_mask_file(capsys, tmp_path, tiny_model_dir, world_dir):
    rc, err = run_cli(capsys, "unlearn", f"runs_dir={tmp_path}", f"model={tiny_model_dir}", f"data={world_dir}",
                      f"reference={tiny_model_dir}", f"mask={tmp_path / 'nope.safetensors'}")
    assert rc == 2 and "unlearn.mask" in err and "nope.safetensors" in err, err


def test_inject_ratio_above_half_refused_at_validation():
    """Refused when the config is built, before any work (it used to fail after injection, when the
    controlled study's disjoint Random region of the same size did not fit)."""
    from loc_unlearn.config import build_config
    from loc_unlearn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"inject.ratio=1\.0"):
        build_config(overrides=["inject.ratio=1"])
    assert build_config(overrides=["inject.ratio=0.5"]).inject.ratio == 0.5


def test_pathlike_model_typo_is_immediate(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    t0 = time.time()
    rc, err = run_cli(capsys, "evaluate", "model=runs/typo")
    assert rc == 2 and "model=runs/typo: no such folder" in err and time.time() - t0 < 5, err


def test_reference_accepts_a_run_dir_and_names_itself(capsys, tmp_path, tiny_model_dir):
    from loc_unlearn.stages import resolve_model
    from loc_unlearn.runs import cached

    run = cached(tmp_path, "finetune", {"x": 1}, lambda p: __import__("shutil").copytree(tiny_model_dir, p / "model") and {})
    assert resolve_model(str(run.path), "reference").run.path == run.path
    rc, err = run_cli(capsys, "evaluate", f"runs_dir={tmp_path}", f"model={tiny_model_dir}", "reference=/nonexistent")
    assert rc == 2 and "reference (eval.reference)=/nonexistent" in err and "model.path" not in err, err


def test_runs_dir_that_cannot_be_created(capsys, tmp_path, tiny_model_dir):
    """Also as root (how CI runs, and root ignores permissions): a file where the runs dir must be made."""
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    for runs_dir in (blocker / "runs", blocker):
        rc, err = run_cli(capsys, "evaluate", f"runs_dir={runs_dir}", f"model={tiny_model_dir}")
        assert rc == 2 and "cannot write" in err and str(blocker) in err and "in the way" in err, err
        assert blocker.read_text() == "in the way"  # nothing lost
    rc, err = run_cli(capsys, "data", "generate", f"runs_dir={tmp_path}", f"out={blocker / 'world'}")
    assert rc == 2 and "cannot write" in err and str(blocker) in err, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions; the test above runs as root")
def test_read_only_runs_dir(capsys, tmp_path, tiny_model_dir):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc, err = run_cli(capsys, "evaluate", f"runs_dir={ro}", f"model={tiny_model_dir}")
    finally:
        ro.chmod(0o755)
    assert rc == 2 and str(ro) in err and "writable" in err, err


def test_oserror_permission_is_one_paragraph(capsys, tmp_path, monkeypatch):
    """The same path as a read-only runs dir, also under root (which ignores permissions)."""
    import dataclasses

    from loc_unlearn.commands import COMMANDS

    def denied(cfg):
        raise PermissionError(13, "Permission denied", str(tmp_path / "evaluate" / "x"))

    monkeypatch.setitem(COMMANDS, "evaluate", dataclasses.replace(COMMANDS["evaluate"], fn=denied))
    rc, err = run_cli(capsys, "evaluate", f"runs_dir={tmp_path}")
    assert rc == 2 and "cannot write" in err and str(tmp_path / "evaluate" / "x") in err and f"runs_dir={tmp_path}" in err


def test_files_respect_the_umask(tmp_path):
    from loc_unlearn.utils import write_text_atomic

    old = os.umask(0o022)
    try:
        f = write_text_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == 0o644


def test_waiting_for_a_run_lock_says_so(tmp_path, capsys, monkeypatch):
    from loc_unlearn import runs

    monkeypatch.setenv("LOC_UNLEARN_QUIET", "0")
    run = runs.get_run(tmp_path, "stage", {"a": 1})
    lock = open(run.path / runs.LOCK, "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # "another process" builds it
    threading.Timer(0.5, lambda: (fcntl.flock(lock, fcntl.LOCK_UN), lock.close())).start()
    runs.cached(tmp_path, "stage", {"a": 1}, lambda p: {})
    out = capsys.readouterr().out
    assert f"waiting for {run.path}" in out and "another process" in out


def test_localize_out_folder_gets_mask_inside(tmp_path):
    """Before: out=<existing folder> raised IsADirectoryError from the mask writer."""
    from loc_unlearn.commands.pipeline import localize_out

    assert localize_out(str(tmp_path)) == tmp_path / "mask.safetensors"
    assert localize_out(str(tmp_path / "new") + "/") == tmp_path / "new" / "mask.safetensors"
    assert localize_out(str(tmp_path / "m.safetensors")) == tmp_path / "m.safetensors"


def test_missing_replay_split_names_its_key_before_any_training(capsys, tmp_path, tiny_model_dir, world_dir,
                                                                monkeypatch):
    import shutil

    from loc_unlearn.train import loop

    data = tmp_path / "data"
    shutil.copytree(world_dir, data)
    (data / "pretrain.json").unlink()
    monkeypatch.setattr(loop, "train", lambda *a, **k: pytest.fail("trained before the data was checked"))
    rc, err = run_cli(capsys, "finetune", f"runs_dir={tmp_path / 'runs'}", f"data={data}",
                      "finetune.replay_split=pretrain", f"model.path={tiny_model_dir}")
    assert rc == 2 and "finetune.replay_split" in err and "pretrain" in err, err


@pytest.mark.parametrize("broken, args", [
    # inject builds theta_r first when model= is not given: the forget file used to be read only after it trained
    ("forget10.json", ["inject"]),
    # unlearn's eval sets used to be read after theta_r (the FQ reference) was fine-tuned
    ("forget10_perturbed.json", ["unlearn", "model={model}"]),
    # localize without model= fine-tunes on `full` first; its forget/retain rows came after
    ("retain90.json", ["localize"]),
    ("retain_perturbed.json", ["study", "controlled", "study.seeds=1", "study.methods=[npo]", "study.localizers=[]",
                               "study.output_fit=false"]),
])
def test_every_split_a_command_uses_is_read_before_any_work(capsys, tmp_path, tiny_model_dir, world_dir, monkeypatch,
                                                            broken, args):
    """Issue 14: a broken split a command will use is named before any training (training is replaced by
    a failure here, so reaching it fails the test)."""
    import shutil

    from loc_unlearn.train import loop

    data = tmp_path / "data"
    shutil.copytree(world_dir, data)
    with open(data / broken, "a") as f:
        f.write("{not json\n")
    monkeypatch.setattr(loop, "train", lambda *a, **k: pytest.fail("trained before the data was checked"))
    rc, err = run_cli(capsys, *[a.format(model=tiny_model_dir) for a in args], f"runs_dir={tmp_path / 'runs'}",
                      f"data={data}", f"model.path={tiny_model_dir}")
    assert rc == 2 and broken in err, err
