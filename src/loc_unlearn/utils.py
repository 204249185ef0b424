"""Small shared helpers: atomic writes, hashing, seeding, progress bars, safetensors I/O."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
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

    A crash or a full disk leaves at most a stray `.tmp-*` file, never a half-written `path`; a full disk
    or a folder that cannot be written raises WriteError (`writing`), whatever library `write_fn` calls.
    """
    path = Path(path)
    with writing(path):
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


# ----------------------------------------------------------------------------- failed writes, one wording
# A full disk or a folder that cannot be written must end in one paragraph (the file, why, the free space,
# what to do), whichever library was writing: Python raises OSError, but safetensors raises its own
# SafetensorError("... No space left on device (os error 28)") and other Rust/C libraries plain
# Exceptions with the same text, so the errno is also read from the message.

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
BLOCKED = frozenset({errno.ENOTDIR, errno.EEXIST})
"""A file where a folder must be made (runs_dir=FILE/..., out=FILE/...): read from an OSError only, never
from a library's message, where these words can mean other things."""
WRITE_ERRNOS = NO_SPACE | NOT_WRITABLE | BLOCKED
_STRERRORS = {os.strerror(c): c for c in NO_SPACE | NOT_WRITABLE}  # "No space left on device" -> ENOSPC, ...
_OS_ERROR = re.compile(r"os error (\d+)")  # Rust's io::Error text: "... (os error 28)"


def write_errno(exc: BaseException, codes=WRITE_ERRNOS) -> int | None:
    """The errno in `codes` that `exc` (or an exception it was raised from) carries: an OSError's, or one
    named in a library error's message ("(os error 28)", "No space left on device"); else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in codes:
            return exc.errno
        text = str(exc)
        m = _OS_ERROR.search(text)
        if m and int(m.group(1)) in codes and int(m.group(1)) not in BLOCKED:
            return int(m.group(1))
        for s, code in _STRERRORS.items():
            if s in text and code in codes:
                return code
        exc = exc.__cause__ or exc.__context__
    return None


def _free_space(path: Path) -> str:
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:  # the nearest folder that exists: the file may be gone
        p = p.parent
    try:
        free = shutil.disk_usage(p).free
    except OSError:
        return "free space unknown"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if free < 1000 or unit == "TB":
            return f"{free:.0f} {unit} free" if unit == "B" else f"{free:.1f} {unit} free"
        free /= 1000
    return ""  # not reached


def write_failure_text(path, code: int, runs_dir: str | None = None) -> str:
    """THE paragraph for a write of `path` that failed with errno `code` (NO_SPACE, NOT_WRITABLE or BLOCKED)."""
    reason = os.strerror(code).lower()  # "no space left on device", "disk quota exceeded", "permission denied"
    where = f"The runs dir (runs_dir={runs_dir}) and out=" if runs_dir else "The runs dir and out="
    fix = ("free some space there" if code in NO_SPACE else "move the file that is in the way of a folder"
           if code in BLOCKED else "make the folder writable")
    return (f"cannot write {path}: {reason} ({_free_space(path)} on that filesystem). Nothing half-written is "
            f"kept: completed stages and checkpoints stay as they were and a rerun resumes. {where} must be "
            f"writable folders with free space: {fix}, or pass runs_dir=DIR (and out=DIR) to use another one, "
            f"then rerun the same command.")


@contextmanager
def writing(path, rename: bool = False):
    """Turn a failed write of `path` for want of space or permission into a WriteError naming `path`
    (write_failure_text), whatever library raised it; other errors pass through unchanged. A WriteError
    from an inner `writing` keeps its own path, unless `rename` (the inner files are temporary, e.g. a
    checkpoint's temp folder: name what the user knows)."""
    from .errors import UserError, WriteError

    try:
        yield
    except WriteError as e:
        if not rename or e.errno is None:
            raise
        raise WriteError(write_failure_text(path, e.errno), path, e.errno) from e
    except UserError:
        raise
    except Exception as e:
        code = write_errno(e)
        if code is None:
            raise
        raise WriteError(write_failure_text(path, code), path, code) from e


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


def apply_threads(n: int) -> None:
    """Config key `threads`: torch's CPU threads in this process (0 leaves torch's default, one per core). The
    entry points apply it (the CLI, studies.common.run_study, the study's worker processes); Python code that
    calls stages directly applies it itself to get the CLI's numbers (float results depend on it)."""
    if n:
        import torch

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


@contextmanager
def torch_threads(n: int):
    """`apply_threads(n)` for the duration of the block, then torch's previous thread count again."""
    import torch

    before = torch.get_num_threads()
    apply_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask: a container's or taskset's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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
    or the OOM killer). name:n:TERM (USR1, ...) sends that signal instead, as a scheduler's preemption
    would at that moment (stop.py). Several points: LOC_UNLEARN_FAULT=a:2,b:1:TERM. A no-op otherwise."""
    spec = os.environ.get("LOC_UNLEARN_FAULT")
    if not spec:
        return
    for item in spec.split(","):
        want, _, rest = item.partition(":")
        n, _, sig = rest.partition(":")
        if want == name:
            _FAULTS[name] = _FAULTS.get(name, 0) + 1
            if _FAULTS[name] == int(n or 1):
                import signal

                os.kill(os.getpid(), getattr(signal, f"SIG{sig.upper()}") if sig else signal.SIGKILL)


# ----------------------------------------------------------------------------- the one device rule
# Every stage that runs a model puts it on its device through `place` right after loading it (stages/
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
