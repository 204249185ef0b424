"""Methods as plug-ins: localizers, unlearning objectives and evaluation metrics defined in a researcher's
own Python file, registered by name, with their hyperparameters declared next to them.

A plug-in file (loaded with `plugins=my_methods.py` or `plugins=my_pkg.methods`, several comma-separated):

    from loc_unlearn.plugins import localizer

    @localizer("scaled_norm", params={"scale": (2.0, "multiplier of the column norms")})
    def scaled_norm(lcfg, model, tokenizer, forget_rows, retain_rows):
        import torch
        from loc_unlearn.models.value_vectors import shape, value_matrix
        return lcfg.params["scale"] * torch.stack([value_matrix(model, l).detach().double().norm(dim=0)
                                                  for l in range(shape(model)[0])])

Then `localize.method=scaled_norm localize.scale=3` (or `localize.params.scale=3`). The built-in methods
register through the same functions (defined in registry.py, re-exported here: the method files of the
package sit below this module). A spec `FILE.py:func` or `module:func` also calls `func()` after the
import, for files that register inside a function.

The run keys take each method's fingerprint (registry.Method.fingerprint: the sha256 of its file(s)
outside the package, "" for built-ins), so editing a plug-in file recomputes what it computed. Only the
file that registers a method and the file defining its function are hashed, not modules they import.

Importing this module imports no torch; `load_builtins` (called by load_plugins and check_methods) does.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import re
import sys
import traceback
from pathlib import Path

from .errors import ConfigError
from .registry import (LOCALIZERS, METRICS, OBJECTIVES, REGISTRIES, coerce_param, localizer,  # noqa: F401
                       metric, objective, register_localizer, register_metric, register_objective, resolve_params)

# ----------------------------------------------------------------------------- loading


def load_builtins() -> None:
    """Register the package's own methods (importing their modules registers them)."""
    from .masks import localize  # noqa: F401  (imports every method file of masks/localize/)
    from .train import objectives  # noqa: F401


_LOADED: dict[str, str] = {}
"""Loaded spec (resolved) -> sha256 of its file ("" for a module), so loading again is a no-op."""


def load_plugins(specs) -> None:
    """Import each plug-in spec: a .py file path (`x.py`, `dir/x.py`), a dotted module name, either with
    `:func` to call after the import. A file whose content changed since it was loaded is loaded again,
    its methods replacing the ones it registered. Errors (missing file, syntax error, an exception while
    importing, a name already registered) are one-paragraph ConfigErrors naming the spec."""
    load_builtins()  # first, so a plug-in reusing a built-in name is refused
    for spec in specs or ():
        spec = str(spec).strip()
        if spec:
            _load(spec)


def _load(spec: str) -> None:
    target, func = spec, ""
    m = re.fullmatch(r"(.+):([A-Za-z_]\w*)", spec)
    if m:
        target, func = m.groups()
    if target.endswith(".py") or "/" in target:
        _load_file(spec, Path(target).expanduser().resolve(), func)
    else:
        _load_module(spec, target, func)


def _load_file(spec: str, path: Path, func: str) -> None:
    if not path.is_file():
        raise ConfigError(f"plugins: cannot load {spec}: no such file {path}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    key = f"{path}:{func}"
    if _LOADED.get(key) == digest:
        return
    _drop(str(path))  # a changed file: its new definitions replace the old ones
    stem = re.sub(r"\W", "_", path.stem)
    modname = f"loc_unlearn_plugin_{stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:10]}"
    module_spec = importlib.util.spec_from_file_location(modname, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[modname] = module  # registered before running: dataclasses and pickling look it up
    try:
        module_spec.loader.exec_module(module)
        if func:
            _call(module, func)
    except Exception as e:  # any failure of user code becomes one paragraph naming the file
        _drop(str(path))
        sys.modules.pop(modname, None)
        raise _load_error(spec, e, str(path)) from None
    _LOADED[key] = digest


def _load_module(spec: str, name: str, func: str) -> None:
    if _LOADED.get(spec) == "":
        return
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError) as e:
        raise ConfigError(f"plugins: cannot load {spec}: {e}") from None
    if found is None:
        raise ConfigError(f"plugins: cannot load {spec}: no module named {name!r} (give a .py file path or an "
                          "importable module)")
    origin = str(Path(found.origin).resolve()) if found.origin else ""
    try:
        module = importlib.import_module(name)
        if func:
            _call(module, func)
    except Exception as e:
        _drop(origin)
        sys.modules.pop(name, None)
        raise _load_error(spec, e, origin) from None
    _LOADED[spec] = ""


def _call(module, func: str) -> None:
    fn = getattr(module, func, None)
    if not callable(fn):
        raise ConfigError(f"{module.__name__} has no function {func!r}")
    fn()


def _drop(origin: str) -> None:
    if origin:
        for reg in REGISTRIES.values():
            reg.drop_origin(origin)


def _load_error(spec: str, e: Exception, path: str) -> ConfigError:
    at = ""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == path]
    if frames and not isinstance(e, SyntaxError):  # a SyntaxError names its line itself
        at = f" (at {Path(path).name} line {frames[-1].lineno})"
    kind = "" if isinstance(e, ConfigError) else f"{type(e).__name__}: "
    msg = " ".join(str(e).split()) or "(no message)"
    return ConfigError(f"plugins: cannot load {spec}: {kind}{msg}{at}")


# ----------------------------------------------------------------------------- checking a Config


def check_methods(cfg):
    """Check every method name and hyperparameter a Config names, before any work: unlearn.method,
    unlearn.params (each declared by some unlearning method), unlearn.per_method (names, and each
    override's hyperparameters declared by that method), localize.method, localize.params (each declared
    by some localizer), study.methods, study.localizers and eval.metrics. Loads cfg.plugins first (a no-op
    when already loaded). Hyperparameter values are converted in place to their declared default's type
    (`unlearn.gamma=1` is 1.0), so run keys do not depend on how a number was written. ConfigError naming
    the key, the unknown name and the known ones. Returns cfg."""
    load_plugins(getattr(cfg, "plugins", ()))
    u, lc = cfg.unlearn, cfg.localize
    OBJECTIVES.check("unlearn.method", u.method)
    _check_params("unlearn", u.params, OBJECTIVES, u.method)
    fields = {f.name for f in dataclasses.fields(u)}
    for name, over in u.per_method.items():
        OBJECTIVES.check("unlearn.per_method", name)
        if not isinstance(over, dict):
            raise ConfigError(f"config key 'unlearn.per_method.{name}': expected a mapping, got {over!r}")
        # An override's hyperparameters must be the method's own (`{rmu: {rmu_c: 5}}` or `{rmu: {params: ...}}`).
        own, where = OBJECTIVES[name].defaults, f"unlearn.per_method.{name}"
        spots = [(over, k, f"{where}.{k}") for k in over if k not in fields]
        if isinstance(over.get("params"), dict):
            spots += [(over["params"], k, f"{where}.params.{k}") for k in over["params"]]
        for d, k, key in spots:
            if k not in own:
                raise ConfigError(f"unknown config key '{key}': not a field of unlearn nor a hyperparameter of {name}; "
                                  f"its hyperparameters: {', '.join(own) or 'none'}")
            d[k] = coerce_param(d[k], own[k], key)
    LOCALIZERS.check("localize.method", lc.method)
    _check_params("localize", lc.params, LOCALIZERS, lc.method)
    for n in cfg.study.methods:
        OBJECTIVES.check("study.methods", n)
    for n in cfg.study.localizers:
        LOCALIZERS.check("study.localizers", n)
    for n in cfg.eval.metrics:
        METRICS.check("eval.metrics", n)
    return cfg


def _check_params(section: str, params: dict, registry, method: str) -> None:
    declared = {}
    for name, rec in registry.items():
        for k, v in rec.defaults.items():
            if name == method or k not in declared:  # the configured method's own type wins
                declared[k] = v
    for k in list(params):
        if k not in declared:
            raise ConfigError(f"unknown config key '{section}.{k}': neither a field of {section} nor a hyperparameter "
                              f"of any {registry.kind}; hyperparameters: {', '.join(sorted(declared)) or 'none'}")
        params[k] = coerce_param(params[k], declared[k], f"{section}.{k}")


# ----------------------------------------------------------------------------- --help


def params_help(section: str) -> list[tuple[str, str, str, str]]:
    """(key, type, defaults per method, doc) of every hyperparameter declared by a registered method of
    `section` ("unlearn" or "localize"), e.g. ("unlearn.beta", "float", "wga 1.0; npo, dpo 0.1; ...", doc)."""
    load_builtins()
    per: dict[str, list] = {}
    for name, rec in REGISTRIES[section].items():
        for k, v in rec.defaults.items():
            per.setdefault(k, []).append((name, v, rec.docs.get(k, "")))
    rows = []
    for k, entries in per.items():
        by_value: dict[str, list[str]] = {}
        for name, v, _ in entries:
            by_value.setdefault(repr(v), []).append(name)
        default = "; ".join(f"{', '.join(names)} {v}" for v, names in by_value.items())
        types = "|".join(dict.fromkeys(type(v).__name__ for _, v, _ in entries))
        doc = next((d for _, _, d in entries if d), "")
        rows.append((f"{section}.{k}", types, default, doc))
    return rows


def metrics_help() -> list[tuple[str, str, str, str]]:
    """(name, label, 'higher is better' | 'lower is better', doc) of every registered metric (eval.metrics)."""
    load_builtins()
    return [(n, m.label, "higher is better" if m.higher_is_better else "lower is better", m.doc)
            for n, m in METRICS.items()]


__all__ = ["check_methods", "coerce_param", "load_builtins", "load_plugins", "localizer", "metric", "metrics_help",
           "objective", "params_help", "register_localizer", "register_metric", "register_objective", "resolve_params"]
