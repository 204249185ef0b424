"""Content-addressed run directories (README.md#where-results-go).

A stage's directory is `runs_dir/<stage>/<hash>` where the hash covers the config sections the stage
uses and the fingerprints of its inputs (other runs' manifests, data files). A run is complete when its
`manifest.json` exists: it is written last, atomically, and lists the sha256 of every file. So a crash
at any point leaves either a complete run or one without a manifest, which is resumed (the stage's own
code resumes from its last checkpoint) and never taken as complete. A complete run whose files no
longer match the manifest (truncated, edited) is refused with a CheckpointError.
"""
from __future__ import annotations

import fcntl
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from . import __version__
from .errors import CheckpointError, Preempted
from .utils import (fault_point, is_main_process, log, sha256_file, sha256_json, world_size, write_json_atomic,
                    write_text_atomic)

MANIFEST = "manifest.json"
LOCK = ".lock"
# Files of a run that record how it went rather than what it computed (not in its fingerprint).
RECORDS = {"metrics.json", "config.yaml", "trainer_state.json", MANIFEST}


def determines_results(rel: str) -> bool:
    """Whether the run file `rel` (relative path) is an artifact (weights, masks, data) rather than a record."""
    name = Path(rel).name
    return name not in RECORDS and not name.endswith((".log", ".md", ".png", ".pdf", ".svg"))
_VERIFIED: set[Path] = set()


@dataclass
class Run:
    path: Path
    stage: str
    key: dict

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def is_complete(self) -> bool:
        return self.manifest_path.is_file()

    def manifest(self) -> dict:
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{self.manifest_path}: unreadable manifest ({e}); delete {self.path} to recompute") from None

    @property
    def fingerprint(self) -> str:
        """Hash of (stage, run key, the files that determine results): the same inputs give the same
        fingerprint on any machine and in any runs dir, and a run rebuilt to the same weights keeps every
        downstream run valid. Records (metrics.json with its timing, config.yaml, logs) are left out:
        they differ between identical rebuilds and may hold absolute paths."""
        man = self.manifest()
        files = {rel: info["sha256"] for rel, info in man["files"].items() if determines_results(rel)}
        # The directory name is the hash of the run key (get_run), free of paths by construction.
        return sha256_json({"stage": man.get("stage", self.stage), "key": self.path.name, "files": files})

    def metrics(self) -> dict:
        return json.loads((self.path / "metrics.json").read_text())

    def verify(self) -> None:
        """Check every file against the manifest's sha256 (detects truncation and edits)."""
        for rel, info in self.manifest()["files"].items():
            f = self.path / rel
            if not f.is_file():
                raise CheckpointError(f"{f}: listed in {self.manifest_path} but missing; delete {self.path} to recompute")
            if f.stat().st_size != info["size"] or sha256_file(f) != info["sha256"]:
                raise CheckpointError(
                    f"{f}: sha256 does not match {self.manifest_path} (file truncated or altered); "
                    f"refusing to use it. Delete {self.path} to recompute.")

    def verify_inputs(self) -> None:
        """Verify the runs this one was built from (the manifest's `inputs`), once per process each: a
        reused study must not stand on a theta_r truncated since."""
        for rel in self.manifest().get("inputs", []):
            d = self.path.parent.parent / rel
            if d in _VERIFIED:
                continue
            inp = Run(d, Path(rel).parent.name, {})
            if not inp.is_complete():
                raise CheckpointError(f"{self.path} was built from {d}, which is missing or incomplete now; "
                                      f"delete {self.path} to recompute")
            inp.verify()
            _VERIFIED.add(d)

    def finish(self, metrics: dict, inputs: list[str] = ()) -> None:
        write_json_atomic(self.path / "metrics.json", metrics)
        write_text_atomic(self.path / "config.yaml", yaml.safe_dump(self.key, sort_keys=False))
        fault_point("before_manifest")
        files = {}
        for f in sorted(self.path.rglob("*")):
            if f.is_file() and f.name not in (MANIFEST, LOCK) and not f.name.startswith(".tmp-"):
                rel = str(f.relative_to(self.path))
                files[rel] = {"sha256": sha256_file(f), "size": f.stat().st_size}
        write_json_atomic(self.manifest_path, {"stage": self.stage, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                               "files": files, "inputs": sorted(inputs)})


def path_fingerprint(path: str) -> str:
    """Content hash of a path named in a config, for run keys: a file's sha256, a run (or a run's model
    folder) its fingerprint; a hub id or another folder stays as named. Empty stays empty."""
    if not path:
        return ""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    for d in (p, p.parent):
        if (d / "manifest.json").is_file():
            return Run(d, "model", {}).fingerprint
    return f"path:{path}"


def wait_for(path: Path, timeout_s: float = 24 * 3600) -> None:
    """Block until `path` exists: under several processes, the others wait for what the main one writes."""
    t0 = time.time()
    while not path.is_file():
        if time.time() - t0 > timeout_s:
            raise CheckpointError(f"waited {timeout_s:.0f} s for the main process to write {path}")
        time.sleep(0.5)


def get_run(runs_dir: str | Path, stage: str, key: dict[str, Any]) -> Run:
    # The package version is part of every key: a release that changes results never reuses old runs.
    h = sha256_json({"key": key, "version": __version__})[:16]
    path = Path(runs_dir) / stage / h
    path.mkdir(parents=True, exist_ok=True)
    return Run(path=path, stage=stage, key=key)


def cached(runs_dir: str | Path, stage: str, key: dict[str, Any], build: Callable[[Path], dict],
           verify: bool = True, collective: bool = False) -> Run:
    """Return the complete run for (stage, key), building it with `build(path) -> metrics` if needed.

    `build` must itself be resumable (e.g. the training loop resumes from its last checkpoint), since an
    interrupted build is called again on the same directory.

    Under `accelerate launch` / torchrun (WORLD_SIZE > 1) a `collective` stage (one that trains) is built
    by every process together; any other stage is built by the main process alone. Either way the main
    process writes metrics.json and the manifest and the other processes wait for that manifest. The
    files a collective `build` writes itself (models, masks) it writes from the main process only
    (`utils.is_main_process()`; every process holds the same copy): this function only sees the
    metrics that `build` returns.
    """
    run = get_run(runs_dir, stage, key)
    with _naming(run):
        return _cached(run, build, verify, collective)


@contextmanager
def _naming(run: Run):
    """A stop signal (stop.py) while this run is built says which run it stopped (the innermost one)."""
    try:
        yield
    except Preempted as e:
        e.run = e.run or f"{run.stage} run {run.path}"
        raise


def _cached(run: Run, build: Callable[[Path], dict], verify: bool, collective: bool) -> Run:
    stage = run.stage
    if world_size() > 1 and not run.is_complete():
        if collective or is_main_process():
            metrics, inputs = _build(run, build)
            if is_main_process():
                run.finish(metrics, inputs)
        wait_for(run.manifest_path)
    if not run.is_complete():
        # An exclusive lock, so two processes (cluster jobs, two terminals) never build one run at once;
        # the second waits and then finds it complete.
        with open(run.path / LOCK, "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f"{stage}: waiting for {run.path} (another process is building it)")
                fcntl.flock(lock, fcntl.LOCK_EX)
            if not run.is_complete():
                log(f"{stage}: running in {run.path}")
                t0 = time.time()
                metrics, inputs = _build(run, build)
                metrics.setdefault("elapsed_s", round(time.time() - t0, 2))
                run.finish(metrics, inputs)
                return _used(run)
    if verify and run.path not in _VERIFIED:
        # Once per process: a study asks for theta_r / theta_o in every job, and hashing an 8B model's
        # weights each time would cost a minute per call.
        run.verify()
        run.verify_inputs()
        _VERIFIED.add(run.path)
    if stage.startswith("study"):  # inner stages are reused many times per study; say it once
        log(f"{stage}: reusing complete run {run.path}")
    return _used(run)


# The runs used by each build in progress (a stack: builds nest), recorded as the new run's `inputs`.
_BUILDING: list[set[str]] = []


def _build(run: Run, build: Callable[[Path], dict]) -> tuple[dict, list[str]]:
    _BUILDING.append(set())
    try:
        metrics = build(run.path) or {}
    finally:
        used = _BUILDING.pop()
    return metrics, sorted(used)


def _used(run: Run) -> Run:
    # Every enclosing build depends on it (a study on all its stages, transitively). Relative to the
    # runs dir: manifests hold no absolute paths.
    for frame in _BUILDING:
        frame.add(f"{run.stage}/{run.path.name}")
    return run
