"""The project's general-knowledge sets (docs/data.md#evaluation-sets): facts of the real world that a small
instruction model knows, written for this project and shipped with it (general_knowledge.jsonl). With
synthetic data they stand in for the real-author and world-fact sets in Model Utility when the model was
not pretrained on the synthetic world (data.utility_sets): a real model knows nothing of that world, so
its MU there would be 0 whatever unlearning did.

Each row is in the layout of TOFU's world-fact rows (`question`, a short `answer`, 3 wrong
`perturbed_answer`s of the same kind) plus a `paraphrased_answer` and `set`: general_people (people and
their works) or general_world (geography, nature, science, the calendar)."""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from ..utils import sha256_file
from .tofu import _read_json_file, validate_rows

GENERAL_SETS = ("general_people", "general_world")
FILE = Path(__file__).with_name("general_knowledge.jsonl")
N_WRONG = 3


def general_sets(path: str | Path | None = None) -> dict[str, list[dict]]:
    """{set name: rows} of the general-knowledge file (default FILE), every row checked (DataError naming the line)."""
    path = Path(path or FILE)
    if not path.is_file():
        raise DataError(f"{path}: the general-knowledge file is missing (it is package data of loc_unlearn; "
                        f"reinstall the package)")
    rows, unit, numbers = _read_json_file(path)
    # TOFU's world-fact fields (question, answer, perturbed_answer), then what this file adds
    validate_rows(rows, "world_facts_perturbed", str(path), unit, numbers)
    sets = {name: [] for name in GENERAL_SETS}
    for r, n in zip(rows, numbers):
        loc = f"{path}: {unit} {n}"
        if r.get("set") not in sets:
            raise DataError(f"{loc}: field 'set' must be one of {', '.join(GENERAL_SETS)}, got {r.get('set')!r}")
        para = r.get("paraphrased_answer")
        if not isinstance(para, str) or not para.strip():
            raise DataError(f"{loc}: field 'paraphrased_answer' must be a non-empty string")
        wrong = r["perturbed_answer"]
        # the truth ratio compares the answer with its wrong answers: a repeat, or the answer among them,
        # would silently weigh one option twice or compare the answer with itself
        if len(wrong) != N_WRONG or len(set(wrong)) != N_WRONG or r["answer"] in wrong:
            raise DataError(f"{loc}: field 'perturbed_answer' must hold {N_WRONG} distinct wrong answers, none "
                            f"equal to the answer {r['answer']!r}; got {wrong!r}")
        sets[r["set"]].append(r)
    for name, rs in sets.items():
        if not rs:
            raise DataError(f"{path}: no row of set {name!r}")
    return sets


def fingerprint(path: str | Path | None = None) -> str:
    """sha256 of the file (default FILE): run keys that evaluate on these sets change with its content."""
    return sha256_file(path or FILE)
