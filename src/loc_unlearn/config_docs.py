"""Field documentation of the config dataclasses, for `loc-unlearn <command> --help`: each field's
docstring (the string literal after it in config/, trl style), parsed from the source with `ast`."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from . import config
from .config import Config, _hints


def field_docs() -> dict[str, dict[str, str]]:
    """{class name: {field: docstring}} of the dataclasses in the config package: the string literal right after
    each annotated field (trl style), read from the source once. Feeds `loc-unlearn <command> --help`."""
    global _FIELD_DOCS
    if _FIELD_DOCS is None:
        import ast

        _FIELD_DOCS = {}
        nodes = [n for f in sorted(Path(config.__file__).parent.glob("*.py")) for n in ast.parse(f.read_text()).body]
        for node in nodes:
            if isinstance(node, ast.ClassDef):
                docs = _FIELD_DOCS.setdefault(node.name, {})
                for a, b in zip(node.body, node.body[1:]):
                    if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                            and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)):
                        docs[a.target.id] = " ".join(b.value.value.split())
    return _FIELD_DOCS


_FIELD_DOCS: dict | None = None


def describe_keys(section: str, cls=None, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, first sentence of the docstring) of every leaf field of `Config.<section>`."""
    cls = cls or _hints(Config)[section]
    prefix = prefix or section
    docs, hints, out = field_docs().get(cls.__name__, {}), _hints(cls), []
    inst = cls()
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}.{f.name}"
        if dataclasses.is_dataclass(tp):
            out += describe_keys(section, tp, key)
            continue
        doc = docs.get(f.name, "")
        first = doc.split(". ")[0].rstrip(".")
        tname = getattr(tp, "__name__", None) if not typing.get_args(tp) else None
        out.append((key, tname or str(tp).replace("typing.", ""), repr(getattr(inst, f.name)), first))
    return out
