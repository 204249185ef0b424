"""Config machinery that knows no particular section: YAML/CLI values coerced to a dataclass field's
type, nested merges with unknown-key errors, `key=value` overrides, YAML in and out."""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from ..errors import ConfigError


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp, where: str):
    """Coerce a YAML/CLI value to type `tp`; raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is Literal:
        if value is False and "off" in args:  # YAML 1.1 reads a bare `off` as false (study.robustness=off)
            value = "off"
        if value not in args:
            raise ConfigError(f"config key '{where}': expected one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""] if value.strip() not in ("", "[]") else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{where}': expected a list, got {value!r}")
        return [_coerce(v, args[0] if args else str, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{where}': expected a mapping, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{where}': expected a mapping, got {value!r}")
        return merge(tp(), value, where)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes", "on"):
                return True
            if str(value).lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, bool):
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            return "" if value is None else str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key '{where}': expected {tp.__name__}, got {value!r}") from None
    return value


def merge(obj, updates: dict, prefix: str = ""):
    """Return `obj` updated in place from a nested dict; unknown keys raise ConfigError, except in a section
    with an open `params` mapping (unlearn, localize), where they are method hyperparameters and land in
    `params` (checked against the registered methods by plugins.check_methods, not here)."""
    hints = _hints(type(obj))
    for key, value in (updates or {}).items():
        where = f"{prefix}.{key}" if prefix else key
        if key not in hints and hints.get("params") is dict:
            # A new dict, not an update in place: method_config's copies share the section's mapping.
            obj.params = _merge_dicts(obj.params, {key: _param_value(value)})
            continue
        if key not in hints:
            known = ", ".join(f.name for f in dataclasses.fields(obj))
            raise ConfigError(f"unknown config key '{where}'; known keys here: {known}")
        tp = hints[key]
        if (tp is dict or typing.get_origin(tp) is dict) and isinstance(value, dict):
            # Mappings merge key by key, so `unlearn.per_method.rmu.train.lr=0.3` adds to the preset's.
            if key == "params":
                value = {k: _param_value(v) for k, v in value.items()}
            setattr(obj, key, _merge_dicts(getattr(obj, key), value))
        elif dataclasses.is_dataclass(tp) and isinstance(value, dict):
            merge(getattr(obj, key), value, where)
        else:
            setattr(obj, key, _coerce(value, tp, where))
    return obj


def _param_value(value):
    """A hyperparameter from YAML or the CLI: number-like strings become numbers (YAML reads `1e-3` as a
    string); the declared default's type is applied by plugins.check_methods and the methods themselves."""
    if isinstance(value, str):
        for tp in (int, float):
            try:
                return tp(value)
            except ValueError:
                pass
    return value


def _merge_dicts(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _parse_value(text: str):
    """CLI values: YAML scalars/lists (so 1e-4, true, [a,b] work), strings otherwise."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_override(obj, key: str, text: str):
    parts = key.split(".")
    nested: dict = {}
    cur = nested
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    value = _parse_value(text)
    # Keep strings for str fields even when YAML parses them as numbers (e.g. path=123).
    cur[parts[-1]] = text if _field_type(obj, parts) is str else value
    return merge(obj, nested)


def _field_type(obj, parts):
    obj = type(obj)
    tp = None
    for p in parts:
        if not dataclasses.is_dataclass(obj):
            return None
        tp = _hints(obj).get(p)
        if tp is None:
            return None
        obj = tp
    return tp


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    return data
