"""The method registries and their records: OBJECTIVES (unlearning methods), LOCALIZERS and METRICS.

A record holds the method's function, its declared hyperparameters (name -> default, with a one-line
doc; the default's type is the value's type), what the rest of the pipeline must prepare for it, and
where it came from: `origin`, the file that registered it, and `fingerprint`, the sha256 of that file
(and of the function's own file when it is another one) for methods defined outside the package, ""
for built-ins. Run keys take the fingerprint, so editing a plug-in file recomputes what it computed
while the built-in methods' keys stay as they were.

Records are added by `register_objective` / `register_localizer` / `register_metric` (or their decorator
forms), the built-in methods included; loc_unlearn.plugins re-exports them for plug-in files and loads those
files. This module is in the lowest layer (the methods import it) and imports no torch.
"""
from __future__ import annotations

import hashlib
import inspect
import re
import sys
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from .errors import ConfigError, unknown_name

PACKAGE_DIR = Path(__file__).resolve().parent
_HERE = {str(Path(__file__).resolve()), str(PACKAGE_DIR / "plugins.py")}


# ----------------------------------------------------------------------------- where a method comes from


def is_builtin(path: str) -> bool:
    try:
        return Path(path).resolve().is_relative_to(PACKAGE_DIR)
    except (OSError, ValueError):
        return False


def caller_file() -> str:
    """The file of the first frame outside this module and plugins.py: the one calling register_*."""
    f = sys._getframe(1)
    while f is not None and str(Path(f.f_code.co_filename).resolve()) in _HERE:
        f = f.f_back
    return str(Path(f.f_code.co_filename).resolve()) if f is not None else ""


def source_file(fn) -> str:
    """The file defining `fn` (a function, a functools.partial, a callable object), or ""."""
    fn = getattr(fn, "func", fn)  # functools.partial
    for obj in (fn, type(fn)):
        try:
            return str(Path(inspect.getfile(obj)).resolve())
        except (TypeError, OSError):
            continue
    return ""


def fingerprint_of(origin: str, fn) -> str:
    """sha256 over the files outside the package among (origin, fn's file); "" when both are built in.
    A file that cannot be read (a notebook cell) is replaced by the function's source text."""
    files = [p for p in dict.fromkeys([origin, source_file(fn)]) if p and not is_builtin(p)]
    if not files:
        return ""
    h = hashlib.sha256()
    for p in files:
        try:
            h.update(Path(p).read_bytes())
        except OSError:
            try:
                h.update(inspect.getsource(getattr(fn, "func", fn)).encode())
            except (TypeError, OSError):
                raise ConfigError(f"cannot read the source of {fn!r} ({p}): define methods in a .py file, "
                                  "so runs can be keyed by its content") from None
    return h.hexdigest()


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Method:
    """What every registered method has. `defaults` may be given as {name: default} or
    {name: (default, one-line doc)}; the docs are then split off into `docs`."""
    fn: Callable
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """Its hyperparameters and their defaults (the default's type is the hyperparameter's type)."""
    _: KW_ONLY
    docs: Mapping[str, str] = field(default_factory=dict)
    """One line per hyperparameter, for --help."""
    doc: str = ""
    """One line about the method."""
    origin: str = ""
    """The file that registered it."""
    fingerprint: str = ""
    """sha256 of its files outside the package ("" = built in); see fingerprint_of."""

    def __post_init__(self):
        defaults, docs = {}, dict(self.docs)
        for k, v in dict(self.defaults).items():
            if isinstance(v, tuple):
                v, docs[k] = v
            if not isinstance(v, (bool, int, float, str)):
                raise ConfigError(f"hyperparameter {k!r}: the default must be a number, a bool or a string, got {v!r}")
            defaults[k] = v
        object.__setattr__(self, "defaults", MappingProxyType(defaults))
        object.__setattr__(self, "docs", MappingProxyType(docs))

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


ANSWER_SETS = ("forget", "idk")
"""Answer sets whose start-model logpi an objective may ask to have cached (`Objective.ref_logp`)."""


@dataclass(frozen=True)
class Objective(Method):
    """An unlearning method: `fn(model, batch, ctx) -> (per-example loss [B], {name: per-example log [B]})`,
    reading its hyperparameters from ctx.hp, and what the training loop must prepare for it."""
    ref_logp: tuple[str, ...] = ()
    """Answer sets (of ANSWER_SETS) whose start-model logpi are computed once and handed over in ctx.ref_logp."""
    needs_idk: bool = False
    """batch["idk"]: one IDK refusal per forget example (the `idk` strings of train())."""
    needs_reference: bool = False
    """ctx.reference(): forwards of the start model during training (delta disabled, or a frozen copy)."""
    always_retain: bool = False
    """batch["retain"] even when alpha == 0 (otherwise retain pairs are built only if alpha != 0)."""
    target: Callable | None = None
    """(hidden size, hp, seed) -> a vector fixed for the run, handed over in ctx.rmu_target."""
    partial_forward: bool = False
    """Its loss ends inside the network: the forward is stopped (an exception out of the model's forward)
    after a layer. DDP cannot synchronize such a step (its reducer is prepared at the end of forward), so the
    loop refuses DDP for it; FSDP2 and one process are fine."""
    revision: int = 0
    """Bumped when `fn` changes its numbers: part of the resume key, so a checkpoint written by the old loss
    is refused instead of continued with the new one (0 = not in the key)."""
    resolve: Callable | None = None
    """(hp, n_layers) -> hp: hyperparameters that depend on the model (RMU's layer, scaled to its depth)."""

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "ref_logp", tuple(self.ref_logp))
        bad = [s for s in self.ref_logp if s not in ANSWER_SETS]
        if bad or ("idk" in self.ref_logp and not self.needs_idk):
            raise ValueError(f"Objective.ref_logp={self.ref_logp}: sets must be in {ANSWER_SETS}, idk needs needs_idk")

    def needs_retain(self, hp: dict) -> bool:
        return self.always_retain or hp.get("alpha", 0) != 0


SIZES = ("", "count", "per_layer")


@dataclass(frozen=True)
class Localizer(Method):
    """A localization method: `fn(cfg, model, tokenizer, forget_rows, retain_rows) -> scores [L, d_ff]`
    (higher = more likely to hold the forget knowledge; -inf = never select), where `cfg` is the
    LocalizeConfig with `cfg.params` resolved (the declared defaults, overridden by localize.params)."""
    needs_source_mask: bool = False
    """localize.source_mask must be set; the mask's metadata records it."""
    size_from_source: str = ""
    """'' = localize.ratio; 'count' = the source mask's size (its per-layer counts when scope=per_layer);
    'per_layer' = the source mask's count in every layer (scope per_layer whatever localize.scope says)."""
    excludes_source: bool = False
    """Never select a value vector of the source mask (its scores are set to -inf before top-k)."""
    uses_reference: bool = False
    """Reads localize.reference (a model folder); the mask's metadata records it when set."""

    def __post_init__(self):
        super().__post_init__()
        if self.size_from_source not in SIZES:
            raise ValueError(f"Localizer.size_from_source={self.size_from_source!r}: expected one of {SIZES}")
        if (self.size_from_source or self.excludes_source) and not self.needs_source_mask:
            raise ValueError("Localizer: size_from_source / excludes_source need needs_source_mask=True")


@dataclass(frozen=True)
class Metric(Method):
    """An evaluation metric: `fn(model, tokenizer, eval_sets: dict, eval_cfg) -> float`, one number per model."""
    higher_is_better: bool = True
    """Whether a larger value is better (for reports)."""
    label: str = ""
    """Short column label for tables (default: the name)."""


# ----------------------------------------------------------------------------- registries


class Registry(dict):
    """name -> record; unknown names are errors that list the known ones."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def add(self, name: str, record: Method) -> Method:
        # Names go into CLI lists (a,b), keys (x=y) and study labels (NAME@scope, random~NAME): plain words only.
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
            raise ConfigError(f"{self.kind} name {name!r}: expected letters, digits, '_', '.' or '-'")
        if name in self:
            old = self[name].origin
            where = "built in" if is_builtin(old) else f"defined in {old}"
            raise ConfigError(f"{self.kind} {name!r} is already registered ({where}); choose another name")
        self[name] = record
        return record

    def get(self, name):  # noqa: D401  (dict.get semantics replaced on purpose)
        if name not in self:
            raise unknown_name(self.kind, name, self.keys())
        return self[name]

    def check(self, key: str, name: str) -> None:
        """ConfigError naming the config key when `name` is not registered."""
        if name not in self:
            raise ConfigError(f"{key}: unknown {self.kind} {name!r}; known: {', '.join(sorted(self))}")

    def fingerprint(self, name: str) -> str:
        """sha256 of the method's source file(s) outside the package; "" for built-ins (run keys)."""
        return self.get(name).fingerprint

    def drop_origin(self, origin: str) -> None:
        """Forget the methods registered by `origin` (a plug-in file being reloaded)."""
        for name in [n for n, r in self.items() if r.origin == origin]:
            del self[name]


OBJECTIVES = Registry("unlearning method")
LOCALIZERS = Registry("localization method")
METRICS = Registry("evaluation metric")
REGISTRIES = {"unlearn": OBJECTIVES, "localize": LOCALIZERS, "eval": METRICS}
"""Config section -> the registry of the methods it names."""


# ----------------------------------------------------------------------------- registering


def _make(cls, fn, params, **fields) -> Method:
    origin = caller_file()
    return cls(fn, dict(params or {}), origin=origin, fingerprint=fingerprint_of(origin, fn), **fields)


def register_objective(name: str, fn, params: dict | None = None, *, doc: str = "", **needs) -> Objective:
    """Add the unlearning method `name`: `fn(model, batch, ctx) -> (per-example loss [B], {name: log [B]})`
    reading its hyperparameters from `ctx.hp`. `params`: {name: default} or {name: (default, doc)}; the
    shared `_combine` (train/objectives.py) reads `gamma` and `alpha`, declare them when using it.
    `needs`: the fields of Objective (ref_logp, needs_idk, needs_reference, always_retain, target,
    partial_forward, revision, resolve)."""
    return OBJECTIVES.add(name, _make(Objective, fn, params, doc=doc, **needs))


def register_localizer(name: str, fn, params: dict | None = None, *, doc: str = "", **needs) -> Localizer:
    """Add the localization method `name`: `fn(cfg, model, tokenizer, forget_rows, retain_rows) -> scores
    [L, d_ff]`, `cfg.params` holding its resolved hyperparameters. `needs`: the fields of Localizer
    (needs_source_mask, size_from_source, excludes_source, uses_reference)."""
    return LOCALIZERS.add(name, _make(Localizer, fn, params, doc=doc, **needs))


def register_metric(name: str, fn, *, higher_is_better: bool = True, label: str = "", doc: str = "") -> Metric:
    """Add the evaluation metric `name`: `fn(model, tokenizer, eval_sets: {set name: rows}, eval_cfg) -> float`,
    computed by evaluate_model for every name in `eval.metrics` and returned under `"metrics"`."""
    return METRICS.add(name, _make(Metric, fn, {}, doc=doc, higher_is_better=higher_is_better, label=label or name))


def objective(name: str, params: dict | None = None, **kw):
    """Decorator form of register_objective (returns the function unchanged)."""
    def deco(fn):
        register_objective(name, fn, params, **kw)
        return fn
    return deco


def localizer(name: str, params: dict | None = None, **kw):
    """Decorator form of register_localizer (returns the function unchanged)."""
    def deco(fn):
        register_localizer(name, fn, params, **kw)
        return fn
    return deco


def metric(name: str, **kw):
    """Decorator form of register_metric (returns the function unchanged)."""
    def deco(fn):
        register_metric(name, fn, **kw)
        return fn
    return deco


# ----------------------------------------------------------------------------- hyperparameter values


def resolve_params(record: Method, params: dict | None, section: str) -> dict:
    """A method's hyperparameters: its declared defaults overridden by the non-None entries of `params` that
    it declares (others belong to other methods of the same section), each as its default's type."""
    out = dict(record.defaults)
    for k, v in (params or {}).items():
        if k in out and v is not None:
            out[k] = coerce_param(v, out[k], f"{section}.{k}")
    return out


def coerce_param(value, default, where: str):
    """`value` as the type of `default` (int for layer indices, float for weights), ConfigError naming `where`."""
    from .config.coerce import _coerce

    return None if value is None else _coerce(value, type(default), where)


__all__ = ["ANSWER_SETS", "LOCALIZERS", "METRICS", "OBJECTIVES", "Localizer", "Method", "Metric", "Objective",
           "Registry", "coerce_param", "localizer", "metric", "objective", "register_localizer", "register_metric",
           "register_objective", "resolve_params"]
