"""A full disk or a folder that cannot be written ends every command in one paragraph naming the file and
the free space, whichever library was writing (issue 23: safetensors raises its own SafetensorError, no
OSError), and nothing half-written is left under a final name."""
import errno
import json
from pathlib import Path

import pytest
from safetensors import SafetensorError

from loc_unlearn.cli import main
from loc_unlearn.errors import WriteError

from helpers import MINI

# safetensors' own text for ENOSPC (Rust's io::Error), as a full filesystem gives it
FULL = "Error while serializing: I/O error: No space left on device (os error 28)"



def _finetune(runs_dir, full_disk_at, monkeypatch, capsys):
    """The finetune CLI (in this process: main() returns the exit status) with safetensors' writer failing
    like a full disk for files whose path contains `full_disk_at`, after writing a few bytes as a real
    disk-full write does. serialize_file: both our writer and transformers' save_pretrained go through it."""
    import safetensors.torch as st

    real = st.serialize_file

    def full_disk(tensors, filename, metadata=None):
        if full_disk_at in str(filename):
            Path(filename).write_bytes(b"\0" * 10)
            raise SafetensorError(FULL)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(st, "serialize_file", full_disk)
    status = main(["finetune", *MINI, "finetune.train.checkpoint_every=0.5", f"runs_dir={runs_dir}"])
    monkeypatch.setattr(st, "serialize_file", real)
    return status, capsys.readouterr().err


def _paragraph(err: str) -> str:
    assert "Traceback" not in err and err.startswith("error: cannot write "), err[-3000:]
    assert "no space left on device" in err and "free on that filesystem" in err and "runs_dir=DIR" in err, err
    return err


def test_safetensors_disk_full_in_the_finetune_cli(tmp_path, mini_cfg, monkeypatch, capsys):
    """Before: SafetensorError escaped the CLI's `except OSError` with a stack trace."""
    from loc_unlearn import stages

    stages.tiny_base(mini_cfg(tmp_path))  # data and base model first: the fault hits the finetune stage
    # 1. the first checkpoint: the message names the checkpoint, its temp folder is gone
    status, err = _finetune(tmp_path, ".tmp-ckpt-", monkeypatch, capsys)
    (run,) = (tmp_path / "finetune").iterdir()
    assert status == 2 and f"cannot write {run / 'train' / 'ckpt-'}" in _paragraph(err), err
    assert f"(runs_dir={tmp_path})" in err
    assert not list((run / "train").iterdir()), "no checkpoint and no temp folder left behind"
    assert not (run / "manifest.json").exists()
    # 2. transformers' save_pretrained (through safetensors) of the final model: all checkpoints are kept
    status, err = _finetune(tmp_path, "/.tmp-model-", monkeypatch, capsys)
    assert status == 2 and f"cannot write {run / 'model'}: " in _paragraph(err), err
    assert not (run / "model").exists() and not (run / "manifest.json").exists()
    assert not [f for f in run.iterdir() if f.name.startswith(".tmp-")]
    # 3. with space again the same command resumes from the last checkpoint and completes
    status, err = _finetune(tmp_path, "never", monkeypatch, capsys)
    assert status == 0, err[-2000:]
    assert (run / "manifest.json").is_file() and (run / "model" / "model.safetensors").is_file()


def test_json_write_on_a_full_disk(tmp_path, monkeypatch):
    """write_json_atomic / write_text_atomic (metrics, manifests, YAML, reports): the paragraph, the old
    file intact, no temp file."""
    from loc_unlearn.utils import write_json_atomic

    f = write_json_atomic(tmp_path / "metrics.json", {"a": 1})

    def full_disk(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(WriteError) as e:
        write_json_atomic(f, {"a": 2})
    assert str(e.value).startswith(f"cannot write {f}: no space left on device (") and "free on that" in str(e.value)
    assert json.loads(f.read_text()) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_report_plot_write_on_a_full_disk(tmp_path, monkeypatch, capsys):
    """`loc-unlearn report`: a plot that cannot be written gives the paragraph naming the PNG (before:
    the CLI's OSError text without the free space)."""
    traj = [{"step": s, "FS": 0.1 * s, "RS": 0.9, "MU": 0.4, "log10_FQ": -3.0} for s in range(3)]
    runs = [{"method": "npo", "region": r, "seed": s, "aues": 0.5 + 0.01 * s, "mu95": -2.0, "mu95_not_reached": False,
             "trajectory": traj} for r in ("oracle", "random") for s in (0, 1)]
    (tmp_path / "results.json").write_text(json.dumps({"study": "controlled", "runs": runs}))

    def full_disk(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {tmp_path / 'plots'}/" in _paragraph(err) and ".png: " in err
    assert not list((tmp_path / "plots").iterdir())


def test_library_errors_anywhere_give_the_paragraph(tmp_path, monkeypatch, capsys):
    """A library error that carries ENOSPC and escapes every `writing` block still ends in the paragraph
    (runs_dir named), not a traceback; other library errors are not mistaken for it."""
    import dataclasses

    from loc_unlearn.commands import COMMANDS

    def full(cfg):
        raise SafetensorError(FULL)

    monkeypatch.setitem(COMMANDS, "evaluate", dataclasses.replace(COMMANDS["evaluate"], fn=full))
    assert main(["evaluate", f"runs_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {tmp_path}: " in _paragraph(err) and f"runs_dir={tmp_path})" in err

    def other(cfg):
        raise SafetensorError("Error while deserializing header: HeaderTooLarge")

    monkeypatch.setitem(COMMANDS, "evaluate", dataclasses.replace(COMMANDS["evaluate"], fn=other))
    with pytest.raises(SafetensorError):
        main(["evaluate", f"runs_dir={tmp_path}"])


@pytest.mark.parametrize("exc, code", [
    (SafetensorError(FULL), errno.ENOSPC),
    (Exception("I/O error: Disk quota exceeded (os error 122)"), errno.EDQUOT),
    (SafetensorError("Error while serializing: I/O error: Read-only file system (os error 30)"), errno.EROFS),
    (PermissionError(errno.EACCES, "Permission denied"), errno.EACCES),
    (ValueError("not a write error"), None),
])
def test_write_errno_reads_library_errors(exc, code):
    from loc_unlearn.utils import write_errno

    assert write_errno(exc) == code
    try:  # and through a wrapper that only keeps it as its cause (matplotlib, PIL)
        raise RuntimeError("could not save") from exc
    except RuntimeError as wrapped:
        assert write_errno(wrapped) == code
