"""Stopping on a scheduler's signal without losing work (issue 23).

SLURM and most schedulers preempt with SIGTERM (some send SIGUSR1 first); submitit sends SIGUSR2 before a
job's time limit. `handling(signals)` (the CLI, a submitit job) installs a handler for them that never
stops a training step half-way: inside `deferred()` (the training loop's steps) the first signal only
sets a flag, which the loop reads at its next step boundary (`requested`), writes a checkpoint and raises
Preempted; anywhere else the signal raises Preempted at once, as Ctrl-C raises KeyboardInterrupt, which
is safe because every write is atomic and a run is complete only once its manifest is written. A second
signal always stops at once. The CLI prints Preempted as one paragraph and exits with 128 + signum.

Which signals: env LOC_UNLEARN_STOP_SIGNALS (default "TERM,USR1"; "none" leaves them to the system).
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

from .errors import ConfigError, Preempted

ENV = "LOC_UNLEARN_STOP_SIGNALS"
DEFAULT = "TERM,USR1"
_state = {"signum": 0, "defer": 0}


def stop_signals(spec: str | None = None) -> list[signal.Signals]:
    """The signals named by `spec` (default: env LOC_UNLEARN_STOP_SIGNALS, else TERM,USR1)."""
    spec = os.environ.get(ENV, DEFAULT) if spec is None else spec
    if spec.strip().lower() in ("", "none", "off"):
        return []
    out = []
    for name in spec.split(","):
        n = name.strip().upper().removeprefix("SIG")
        sig = getattr(signal, f"SIG{n}", None)
        # INT stays Ctrl-C's KeyboardInterrupt; KILL and STOP cannot be caught
        if not isinstance(sig, signal.Signals) or n in ("INT", "KILL", "STOP"):
            raise ConfigError(f"{ENV}={spec!r}: {name.strip()!r} is not a signal to stop on; use names such as "
                              "TERM,USR1,USR2, or none")
        out.append(sig)
    return out


def _handler(signum, frame) -> None:
    first = not _state["signum"]
    if first:
        _state["signum"] = signum
    if first and _state["defer"]:
        return  # the training loop stops at its next step boundary
    raise Preempted(signum)


@contextmanager
def handling(signals):
    """Stop on `signals` during the block (see the module docstring); the previous handlers come back after.
    Only the main thread can install handlers: elsewhere the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _handler) for s in signals}
    _state["signum"] = 0
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _state["signum"] = 0


@contextmanager
def deferred():
    """A block that a first stop signal does not interrupt: it only sets the flag (`requested`), which the
    block must check at its safe points. Left with the flag set and no exception: Preempted then."""
    _state["defer"] += 1
    try:
        yield
    finally:
        _state["defer"] -= 1
    if _state["signum"] and not _state["defer"]:
        raise Preempted(_state["signum"])


def requested() -> int:
    """The signal number received (0: none)."""
    return _state["signum"]
