"""Small shared helpers: atomic writes, hashing, seeding, progress bars, safetensors I/O."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def atomic_write(path: str | Path, write_fn) -> Path:
    """Write via `write_fn(tmp_path)` to a temp file in the same folder, fsync, then rename.

    A crash or a full disk leaves at most a stray `.tmp-*` file, never a half-written `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    # mkstemp creates 0600; give the file the mode open() would (0666 minus the umask), so runs can be
    # shared with a group or read by other users like any other file.
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set back at once
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: Path(p).write_text(text))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o)}")


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}

    def write(p):
        save_file(tensors, p, metadata=metadata)
        _sort_safetensors_metadata(p)

    return atomic_write(path, write)


def _sort_safetensors_metadata(path) -> None:
    """Rewrite the header's `__metadata__` with sorted keys, in place. safetensors serializes that map
    from a Rust HashMap, in an order that changes from process to process: without this, the same
    tensors give different bytes (and sha256) on every run, and content-addressed runs never match."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        raw = f.read(n)
        head = json.loads(raw)
        meta = head.get("__metadata__")
        if not meta or len(meta) < 2:
            return
        head["__metadata__"] = dict(sorted(meta.items()))
        new = json.dumps(head, separators=(",", ":"), ensure_ascii=False).encode()
        if len(new) > n:  # never move the tensor data; the header stays as written
            return
        f.seek(8)
        f.write(new + b" " * (n - len(new)))  # the format allows trailing spaces in the header


def progress(iterable=None, **kw):
    """tqdm progress bar; quiet when LOC_UNLEARN_QUIET=1 (tests)."""
    from tqdm.auto import tqdm

    kw.setdefault("disable", os.environ.get("LOC_UNLEARN_QUIET") == "1")
    kw.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kw)


def log(msg: str) -> None:
    if os.environ.get("LOC_UNLEARN_QUIET") != "1":
        print(f"[loc-unlearn] {msg}", flush=True)


def world_size() -> int:
    """Processes of this job (accelerate launch / torchrun set WORLD_SIZE and RANK)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


_FAULTS: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Fault injection for the reliability tests: with LOC_UNLEARN_FAULT=name:n in the environment, the
    n-th time this point is reached the process kills itself with SIGKILL (no cleanup, like a power cut
    or the OOM killer). Several points: LOC_UNLEARN_FAULT=a:2,b:1. A no-op otherwise."""
    spec = os.environ.get("LOC_UNLEARN_FAULT")
    if not spec:
        return
    for item in spec.split(","):
        want, _, n = item.partition(":")
        if want == name:
            _FAULTS[name] = _FAULTS.get(name, 0) + 1
            if _FAULTS[name] == int(n or 1):
                import signal

                os.kill(os.getpid(), signal.SIGKILL)


# ----------------------------------------------------------------------------- the one device rule
# Every stage that runs a model puts it on its device through `place` right after loading it (stages.py
# ModelRef.load and the few loads outside it), so one setting (config key `device`) decides where all of
# them run. `place` marks the model with the device it chose (PLACED_ATTR): tests/test_device.py records
# every forward of a top-level model over the mini pipeline and fails on a model without the mark, i.e.
# on a stage that loaded a model and ran it without going through here.

PLACED_ATTR = "_loc_unlearn_placed_on"


def resolve_device(setting: str = "auto") -> torch.device:
    """The torch device of a `device` setting: 'auto' = cuda when torch.cuda.is_available(), else cpu;
    'cpu'; 'cuda' (a ConfigError naming the key when no GPU is present, not a CUDA stack trace later).
    Under several processes (accelerate launch / torchrun set LOCAL_RANK) cuda is this process's own GPU,
    the one the training loop's accelerator uses too."""
    from .checks import check_device_setting
    from .errors import ConfigError

    check_device_setting(setting)
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("config key 'device' is 'cuda' but no CUDA device is available here "
                          "(torch.cuda.is_available() is False); use device=auto (a GPU when there is one, "
                          "else the CPU) or device=cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def place(model, setting: str = "auto"):
    """Move `model` to the device of `setting` (resolve_device), in place, and mark it with that device
    (PLACED_ATTR, read by `placed_device`). Returns the model. The dtype is left as loaded."""
    dev = resolve_device(setting)
    model.to(dev)
    # A plain attribute (nn.Module keeps non-tensor attributes in __dict__): copy.deepcopy keeps it, so a
    # copy of a placed model (the output fit's stitched model) counts as placed, on the same device.
    setattr(model, PLACED_ATTR, str(dev))
    return model


def placed_device(model) -> str | None:
    """The device `place` put `model` on ('cpu', 'cuda:0'), or None if it never went through `place`."""
    return getattr(model, PLACED_ATTR, None)


def device_info(model) -> dict:
    """{"device": "cpu" | "cuda", "dtype": "float32" | "bfloat16" | ...} of `model`'s weights, for a run's
    metrics: where the stage actually ran its model and in which precision (read from the parameters,
    so it also holds after training moved the model)."""
    p = next(model.parameters())
    return {"device": p.device.type, "dtype": str(p.dtype).removeprefix("torch.")}


@contextmanager
def eval_mode(model):
    """Run a block with `model.eval()` and restore the caller's train/eval mode afterwards (metrics and
    localization are called from inside training too, which must not be left in eval mode)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
