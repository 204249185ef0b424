"""Load and validate TOFU-format splits (docs/data.md#tofu-layout) from a local folder or the Hugging Face hub.

A local folder holds `<split>.json` or `<split>.jsonl` (JSON Lines, like the hub, or one JSON array).
A folder without such a file but with a hub-style README.md (YAML `configs:`), or a hub id such as
`locuslab/TOFU`, goes through `datasets.load_dataset(source, name, split="train")`.
DPO's refusals come from the folder's `idontknow.jsonl` (TOFU's file, plain lines) or `idk.jsonl`
(the synthetic world's, JSON strings), else a built-in list (load_idk).
Every problem is a DataError naming the file, the 1-based line/row and the field.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import DataError, UserError, unknown_name

QA_SPLITS = ["full", "forget01", "forget05", "forget10", "retain99", "retain95", "retain90", "pretrain"]
PERTURBED5_SPLITS = ["forget01_perturbed", "forget05_perturbed", "forget10_perturbed", "retain_perturbed"]
PERTURBED3_SPLITS = ["real_authors_perturbed", "world_facts_perturbed"]
SPLITS = QA_SPLITS + PERTURBED5_SPLITS + PERTURBED3_SPLITS
FORGET_TO_RETAIN = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def required_fields(name: str) -> dict[str, type]:
    """Fields each row of split `name` must have (str, or list for perturbed answers)."""
    f = {"question": str, "answer": str}
    if name in PERTURBED5_SPLITS:
        f |= {"paraphrased_answer": str, "perturbed_answer": list, "paraphrased_question": str}
    elif name in PERTURBED3_SPLITS:
        f |= {"perturbed_answer": list}
    return f


def validate_rows(rows: list, name: str, where: str, unit: str = "line", numbers: list[int] | None = None) -> list[dict]:
    """Check fields, types and emptiness; `where` names the file, `numbers[i]` is row i's line/row."""
    if not rows:
        raise DataError(f"{where}: split {name!r} is empty (expected at least one row)")
    fields = required_fields(name)
    for i, r in enumerate(rows):
        loc = f"{where}: {unit} {numbers[i] if numbers else i + 1}"
        if not isinstance(r, dict):
            raise DataError(f"{loc}: expected a JSON object with fields {sorted(fields)}, got {type(r).__name__}")
        for k, t in fields.items():
            if k not in r or r[k] is None:
                raise DataError(f"{loc}: missing field {k!r} (split {name!r} needs {sorted(fields)})")
            v = r[k]
            if t is str:
                if not isinstance(v, str):
                    raise DataError(f"{loc}: field {k!r} must be a string, got {type(v).__name__}")
                if not v.strip():
                    raise DataError(f"{loc}: field {k!r} is empty")
            else:
                if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
                    raise DataError(f"{loc}: field {k!r} must be a non-empty list of strings, got {v!r:.80}")
                if any(not x.strip() for x in v):
                    raise DataError(f"{loc}: field {k!r} holds an empty string")
    return rows


def _read_json_file(path: Path) -> tuple[list, str, list[int]]:
    """Rows of a JSON Lines file or a JSON array, with their 1-based line (JSONL) or row (array) numbers."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {e.lineno}, column {e.colno}: malformed JSON ({e.msg})") from None
        return rows, "row", list(range(1, len(rows) + 1))
    rows, numbers = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {n}: malformed JSON ({e.msg} at column {e.colno})") from None
        numbers.append(n)
    return rows, "line", numbers


def _split_file(folder: Path, name: str) -> Path | None:
    for ext in (".json", ".jsonl"):
        if (folder / f"{name}{ext}").is_file():
            return folder / f"{name}{ext}"
    return None


def _hub_rows(source: str, name: str) -> list[dict]:
    try:
        import datasets

        ds = datasets.load_dataset(source, name, split="train")
    except Exception as e:  # offline, unknown repo, missing config: all the same advice
        raise UserError(
            f"could not load split {name!r} of dataset {source!r} with datasets.load_dataset "
            f"({type(e).__name__}: {str(e).strip()[:300]}). Without network, set data.source to a local folder "
            f"holding {name}.json / {name}.jsonl, or data.source=synthetic for the offline author world.") from None
    return ds.to_list()


def load_split(source: str | Path, name: str) -> list[dict]:
    """Rows of split `name` (docs/data.md#tofu-layout) from a local folder or a hub id, validated (contracts.md)."""
    if name not in SPLITS:
        raise unknown_name("split", name, SPLITS)
    folder = Path(source)
    if folder.is_dir():
        f = _split_file(folder, name)
        if f is not None:
            rows, unit, numbers = _read_json_file(f)
            return validate_rows(rows, name, str(f), unit, numbers)
        if not (folder / "README.md").is_file():
            found = sorted(p.name for p in folder.iterdir() if p.suffix in (".json", ".jsonl")) or ["no JSON files"]
            raise DataError(f"{folder}: no {name}.json or {name}.jsonl for split {name!r}; found: {', '.join(found)}")
        # a hub-style dataset repo checked out locally: let `datasets` read its README configs
    elif not _HUB_ID.match(str(source)) or str(source).startswith((".", "/", "~")):
        raise DataError(f"data source {str(source)!r} is neither an existing folder nor a hub id like 'locuslab/TOFU'")
    return validate_rows(_hub_rows(str(source), name), name, f"{source} (hub split {name!r})", "row")


# Refusal files looked for in a local data folder, in this order: TOFU's (one plain-text refusal per
# line) and the synthetic world's (one JSON string per line). Either format is read from either name.
IDK_FILES = ("idontknow.jsonl", "idk.jsonl")


def idk_file(source: str | Path | None) -> Path | None:
    """The refusal file load_idk reads from `source` (a local folder), or None (built-in refusals)."""
    if not source or not Path(source).is_dir():
        return None
    return next((Path(source) / n for n in IDK_FILES if (Path(source) / n).is_file()), None)


def _read_refusals(path: Path) -> list[str]:
    """Non-blank lines of `path`: plain text, or a JSON string when the line is quoted ("...")."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        if s[0] in "[{":
            raise DataError(f"{path}: line {n}: expected a refusal (a plain text line or a JSON string), "
                            f"got what looks like a JSON object or array: {s!r:.80}")
        if len(s) >= 2 and s[0] == s[-1] == '"':
            try:
                s = json.loads(s)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {n}: malformed JSON string ({e.msg} at column {e.colno})") from None
            if not isinstance(s, str) or not s.strip():
                raise DataError(f"{path}: line {n}: empty refusal")
            s = s.strip()
        out.append(s)
    if not out:
        raise DataError(f"{path}: no refusals (expected one refusal per line, plain text or a JSON string)")
    return out


def load_idk(source: str | Path | None = None) -> list[str]:
    """Refusals for DPO (docs/data.md#idk-refusals) from the first of IDK_FILES in the folder `source` (TOFU's
    `idontknow.jsonl`: plain lines; `idk.jsonl`: JSON strings; both formats are read from either), else
    the built-in 100. Logs which it used."""
    from ..utils import log  # imported here: utils loads torch, which reading splits does not need

    f = idk_file(source)
    if f is None:
        from .synthetic import idk_answers

        where = f"no {' or '.join(IDK_FILES)} in {source}" if source else "no data folder"
        log(f"DPO refusals: the 100 built-in ones ({where})")
        return idk_answers()
    rows = _read_refusals(f)
    log(f"DPO refusals: {len(rows)} from {f}")
    return rows


def retain_split_for(forget_split: str) -> str:
    """forget01 -> retain99, forget05 -> retain95, forget10 -> retain90 (docs/data.md#forget-and-retain-splits)."""
    if forget_split not in FORGET_TO_RETAIN:
        raise unknown_name("forget split", forget_split, FORGET_TO_RETAIN)
    return FORGET_TO_RETAIN[forget_split]
