"""User-facing errors. The CLI prints these as one paragraph (no stack trace) and exits 2.

Raise `UserError` (or a subclass) for anything the user can fix: bad config keys, malformed data,
wrong mask shapes, unknown names. Always name the file / line / field / key and what was expected.
"""


class UserError(Exception):
    """An error caused by the user's input; shown without a traceback."""


class ConfigError(UserError):
    pass


class DataError(UserError):
    pass


class MaskError(UserError):
    pass


class CheckpointError(UserError):
    pass


class TrainingDiverged(UserError):
    """NaN/inf loss: training stopped, the last good checkpoint is kept."""


class WriteError(UserError):
    """A write failed for want of space or permission (disk full, quota, read-only, denied), whatever
    library raised it (utils.writing): one paragraph naming the file, the reason and the free space."""

    def __init__(self, message: str, path=None, errno: int | None = None):
        super().__init__(message)
        self.path, self.errno = path, errno


class Preempted(BaseException):
    """Stopped by a stop signal (SIGTERM, SIGUSR1: a scheduler's preemption; see stop.py). A BaseException
    like KeyboardInterrupt, so that no `except Exception` on the way up swallows it; the CLI prints it as
    one paragraph and exits with 128 + signum."""

    def __init__(self, signum: int, detail: str = "", resume: str = ""):
        super().__init__(signum)
        self.signum = signum
        self.detail = detail
        """Where it stopped (the training loop: the step and the checkpoint written), or ''."""
        self.resume = resume
        """Where a rerun resumes ('step 5/14'), or ''."""
        self.run = ""
        """The run being built when it stopped (runs.cached fills it in), or ''."""

    def __str__(self) -> str:
        import signal

        try:
            name = signal.Signals(self.signum).name
        except ValueError:
            name = f"signal {self.signum}"
        where = "".join(x for x in (f" while building the {self.run}" if self.run else "",
                                    f", {self.detail}" if self.detail else ""))
        return (f"stopped by {name}{where}. Completed stages and checkpoints are kept; rerun the same command to "
                f"resume{' from ' + self.resume if self.resume else ''}.")


def unknown_name(kind: str, name: str, known) -> UserError:
    return UserError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(known))}")
