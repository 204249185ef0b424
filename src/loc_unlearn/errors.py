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


def unknown_name(kind: str, name: str, known) -> UserError:
    return UserError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(known))}")
