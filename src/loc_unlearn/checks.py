"""Value rules shared by config validation and library guards, one message each (a leaf module: it
imports nothing of the package, so the registries' modules can use it without an import cycle)."""
from __future__ import annotations

from pathlib import Path

from .errors import ConfigError


def check_fraction(key: str, value) -> float:
    """A fraction of value vectors: a number in (0, 1] (mask ratios)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(f"{key}={value!r}: expected a fraction of value vectors in (0, 1]")
    return float(value)


def check_positive(key: str, value) -> None:
    if not value > 0:
        raise ConfigError(f"{key}={value!r}: expected a number > 0")


def check_at_least(key: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{key}={value!r}: expected an integer >= {low}")


def check_file(key: str, path: str) -> None:
    """An optional input file (masks): empty, or an existing file."""
    if path and not Path(path).is_file():
        what = "is a folder" if Path(path).is_dir() else "does not exist"
        raise ConfigError(f"{key}={path}: {what}; expected a mask file (.safetensors, e.g. the mask.safetensors "
                          f"of a localize or inject run)")


DEVICE_SETTINGS = ("auto", "cpu", "cuda")


def check_device_setting(value) -> str:
    """The top-level `device` setting: one of DEVICE_SETTINGS (config key `device`)."""
    if value not in DEVICE_SETTINGS:
        raise ConfigError(f"config key 'device': expected one of {', '.join(DEVICE_SETTINGS)} "
                          f"(auto = cuda when a GPU is available, else cpu), got {value!r}")
    return value
