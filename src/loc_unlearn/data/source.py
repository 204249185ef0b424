"""`DataSource`: where a config's data is (the synthetic world's run folder, a local folder of TOFU-named
JSON/JSONL files, or a hub id) and a fingerprint of its content. stages.data_source resolves a config into
one, once per command or study job; the stages read their rows from it and key their runs by it."""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from ..errors import DataError
from ..utils import log, sha256_file, sha256_json
from . import general_knowledge
from .tofu import IDK_FILES, idk_file, load_idk, load_split, retain_split_for


EVAL_SETS = {"forget": None, "retain": "retain_perturbed", "real_authors": "real_authors_perturbed",
             "world_facts": "world_facts_perturbed"}
WORLD_SETS = ("real_authors", "world_facts")
"""The data's own knowledge sets (TOFU's real authors and world facts; the synthetic world's are fictional)."""
UTILITY_SETS = {"world": WORLD_SETS, "general": general_knowledge.GENERAL_SETS}
"""Model Utility's knowledge sets by `data.utility_sets` (resolved: world or general), docs/data.md#evaluation-sets."""


@dataclasses.dataclass(frozen=True)
class DataSource:
    """The data of a config, resolved once (`stages.data_source`): where the TOFU-format splits are and a
    fingerprint of their content for run keys."""
    path: str
    """Folder or hub id, for `tofu.load_split`."""
    fingerprint: str
    """synthetic: the data run's fingerprint; folder: sha256 of its JSON/JSONL files; hub: 'hub:<id>'."""
    source: str
    """`data.source` as configured (for messages)."""
    forget_split: str
    configured_retain_split: str = ""
    """`data.retain_split`; empty = the complement of the forget split (`retain_split`)."""
    max_eval_rows: int = 0
    utility_sets: str = "world"
    """Model Utility's knowledge sets (`data.utility_sets` resolved by stages.data_source): 'world' = the
    data's real_authors / world_facts, 'general' = the project's general-knowledge sets."""

    def __post_init__(self):
        if self.utility_sets not in UTILITY_SETS:
            raise DataError(f"DataSource.utility_sets={self.utility_sets!r}: expected one of {', '.join(UTILITY_SETS)} "
                            f"(data.utility_sets=auto is resolved by stages.data_source)")

    @property
    def eval_fingerprint(self) -> str:
        """The fingerprint of the eval sets, for the run keys of evaluations: the data's, and with the
        general-knowledge sets also that file's content (so editing it evaluates again). Equal to
        `fingerprint` with the data's own sets, so those run keys are the ones they always were."""
        if self.utility_sets == "world":
            return self.fingerprint
        return sha256_json({"data": self.fingerprint, "utility_sets": self.utility_sets,
                            "general_knowledge": general_knowledge.fingerprint()})

    @property
    def retain_split(self) -> str:
        # Derived on use: commands that never read the retain split also work with custom forget splits.
        return self.configured_retain_split or retain_split_for(self.forget_split)

    def rows(self, split: str) -> list[dict]:
        return load_split(self.path, split)

    def forget_rows(self) -> list[dict]:
        return self.rows(self.forget_split)

    def retain_rows(self) -> list[dict]:
        return self.rows(self.retain_split)

    def idk(self, required: bool = False) -> list[str]:
        """DPO's refusals (docs/data.md#idk-refusals). `required` (a method that trains on them will run): a
        local folder must hold its own refusal file, or the built-in ones would stand in for the benchmark's
        unnoticed; a hub id is not searched for one and gets the built-in ones (logged)."""
        if required and Path(self.path).is_dir() and idk_file(self.path) is None:
            raise DataError(
                f"{self.path}: no {' or '.join(IDK_FILES)} with the refusals that DPO prefers over the forget "
                f"answers (docs/data.md#idk-refusals). Put TOFU's idontknow.jsonl (one refusal per line, shipped "
                f"with TOFU's code) in that folder, or run without DPO (study.methods, unlearn.method).")
        return load_idk(self.path)

    def eval_sets(self) -> dict[str, list[dict]]:
        """The eval sets of docs/data.md#evaluation-sets: forget, retain and Model Utility's knowledge sets
        (`utility_sets`). The data's real-authors / world-facts sets are optional (MU says which it used)."""
        sets = {}
        for name, split in EVAL_SETS.items():
            if name in WORLD_SETS and self.utility_sets != "world":
                continue
            split = split or f"{self.forget_split}_perturbed"
            try:
                rows = self.rows(split)
            except DataError:
                if name in ("forget", "retain"):
                    raise
                log(f"eval set {split} not found in {self.source}; Model Utility will use the sets it has")
                continue
            sets[name] = rows
        if self.utility_sets == "general":
            sets |= general_knowledge.general_sets()
        if self.max_eval_rows:
            sets = {name: rows[: self.max_eval_rows] for name, rows in sets.items()}
        return sets


def folder_fingerprint(folder: Path) -> str:
    files = sorted(f for f in folder.iterdir() if f.suffix in (".json", ".jsonl"))
    # Hash the files once per process, again only when one changed (size or mtime).
    return _hash_files(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


@functools.lru_cache(maxsize=16)
def _hash_files(stats: tuple) -> str:
    return sha256_json({Path(f).name: sha256_file(f) for f, _, _ in stats})
