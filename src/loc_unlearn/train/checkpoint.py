"""Training checkpoints on disk (docs/objectives.md#training-recipe): write, verify, find, resume, rebuild.

`out_dir/ckpt-<step>/` is written to a temp folder and renamed, so a checkpoint exists iff it is complete;
its manifest.json holds the sha256 of every file. A masked run stores only its deltas
(`delta.safetensors`: idx.<l>, delta.<l>), an unmasked one the whole model (`model.safetensors`); both
store the optimizer state (`optimizer.safetensors` + param_groups in trainer_state.json). The start
model's reference log-probs (`ref_logps.safetensors`) live beside the checkpoints, written once.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..models.value_vectors import shape, value_matrix
from ..utils import fault_point, log, save_safetensors_atomic, sha256_file, write_json_atomic, writing
from .masked import merge_columns

CKPT_RE = re.compile(r"^ckpt-(\d+)$")
REF_LOGPS = "ref_logps.safetensors"


def _weights_file(masked: bool) -> str:
    return "delta.safetensors" if masked else "model.safetensors"


def save_checkpoint(out_dir: Path, step: int, weights: dict, masked: bool, model_fingerprint: dict,
                    opt_tensors: dict, param_groups: list, state: dict) -> Path:
    """Write `out_dir/ckpt-<step>` atomically: `weights` (gathered: a masked run's `idx.<l>`/`delta.<l>`,
    or the whole model state), the optimizer's gathered tensors and param groups, `state`, a manifest."""
    final = out_dir / f"ckpt-{step}"
    tmp = out_dir / f".tmp-ckpt-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with writing(final, rename=True):  # names the checkpoint, not its temp folder
        try:
            tmp.mkdir(parents=True)
            meta = {"format": "masked_delta" if masked else "full", **{k: str(v) for k, v in model_fingerprint.items()}}
            # clone: tied weights share storage, which safetensors refuses to write
            save_safetensors_atomic({k: v.detach().cpu().clone() for k, v in weights.items()},
                                    tmp / _weights_file(masked), metadata=meta)
            save_safetensors_atomic(opt_tensors, tmp / "optimizer.safetensors")
            fault_point("checkpoint_save")  # reliability tests: a kill here leaves only a .tmp-ckpt folder
            write_json_atomic(tmp / "trainer_state.json", {**state, "param_groups": param_groups})
            write_json_atomic(tmp / "manifest.json", {p.name: sha256_file(p) for p in sorted(tmp.iterdir())})
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a full disk needs the space back (a SIGKILL leaves it)
            raise
        if final.exists():  # the same step written by an earlier attempt: replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
    return final


def verify(ckpt: Path) -> None:
    """Raise CheckpointError unless every file in the manifest is present with its sha256."""
    man = ckpt / "manifest.json"
    if not man.is_file():
        raise CheckpointError(f"checkpoint {ckpt} has no manifest.json (not a complete checkpoint)")
    try:
        files = json.loads(man.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"checkpoint {ckpt}: manifest.json is not valid JSON") from None
    for name, digest in files.items():
        p = ckpt / name
        if not p.is_file() or sha256_file(p) != digest:
            raise CheckpointError(f"checkpoint {ckpt}: {name} is missing or corrupted (sha256 mismatch)")


def checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every ckpt-<step> folder in `out_dir`, in step order (not verified)."""
    if not out_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out_dir.iterdir() if (m := CKPT_RE.match(p.name)) and p.is_dir()]
    return sorted(found)


def last_checkpoint(out_dir: Path) -> Path | None:
    found = checkpoints(out_dir)
    return found[-1][1] if found else None


def resume_latest(out_dir: Path, run_key: str, masked: bool, load_weights, load_optimizer,
                  device) -> tuple[Path, dict] | None:
    """Load the newest intact checkpoint of `out_dir` through `load_weights(state)` and
    `load_optimizer(tensors, param_groups)` (the loop's, engine-aware); returns (folder, trainer state)
    or None when there is none. Damaged ones are skipped; one written by another run (run_key) is refused."""
    from safetensors.torch import load_file

    for _, ck in reversed(checkpoints(out_dir)):
        try:
            verify(ck)
        except CheckpointError as e:
            log(f"skipping damaged checkpoint: {e}")
            continue
        st = json.loads((ck / "trainer_state.json").read_text())
        if st.get("run_key") != run_key:
            raise CheckpointError(f"{ck} was written by a different run (objective, config, mask or data "
                                  f"differ); use another out_dir or delete {out_dir}")
        # safetensors knows "cpu", not accelerate's "cpu:0" (several processes on CPU)
        dev = "cpu" if torch.device(device).type == "cpu" else str(device)
        load_weights(load_file(str(ck / _weights_file(masked)), device=dev))
        load_optimizer(load_file(str(ck / "optimizer.safetensors"), device=dev), st["param_groups"])
        return ck, st
    return None


def drop_resume_points(out_dir: Path, keep: set[int]) -> None:
    """Delete the checkpoints written only to resume after a stop signal (trainer state `resume_only`) at
    steps not in `keep`: once the run has gone past them they are no trajectory point, and a resumed run's
    folder then holds the same files as an uninterrupted one's (the same run fingerprint)."""
    for step, ck in checkpoints(out_dir):
        if step in keep:
            continue
        try:
            extra = json.loads((ck / "trainer_state.json").read_text()).get("resume_only")
        except (OSError, json.JSONDecodeError):
            continue
        if extra:
            shutil.rmtree(ck, ignore_errors=True)


def load_ref_logps(out_dir: Path) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load_file

    f = out_dir / REF_LOGPS
    return load_file(str(f)) if f.is_file() else None


def save_ref_logps(out_dir: Path, cache: dict[str, torch.Tensor]) -> None:
    save_safetensors_atomic(cache, out_dir / REF_LOGPS)


@torch.no_grad()
def load_checkpoint(base_model, ckpt_dir) -> torch.nn.Module:
    """Rebuild the model at `ckpt_dir` from `base_model` (the model training started from), in place:
    masked checkpoints add their deltas to the masked columns (same arithmetic as MaskedDelta.merge),
    full ones load all weights. Verifies the sha256 manifest first."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    ckpt = Path(ckpt_dir)
    verify(ckpt)
    if (ckpt / "delta.safetensors").is_file():
        with safe_open(str(ckpt / "delta.safetensors"), "pt") as f:
            meta = f.metadata() or {}
        L, d_ff = shape(base_model)
        if (meta.get("n_layers"), meta.get("d_ff")) != (str(L), str(d_ff)):
            raise CheckpointError(f"checkpoint {ckpt} was trained on a model with n_layers={meta.get('n_layers')}, "
                                  f"d_ff={meta.get('d_ff')}; this model has n_layers={L}, d_ff={d_ff}")
        sd = load_file(str(ckpt / "delta.safetensors"))
        for l in range(L):
            w = value_matrix(base_model, l)
            merge_columns(w, sd[f"idx.{l}"].to(w.device), sd[f"delta.{l}"].to(w.device))
    elif (ckpt / "model.safetensors").is_file():
        sd = load_file(str(ckpt / "model.safetensors"))
        try:
            base_model.load_state_dict(sd)
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint {ckpt} does not fit this model: {str(e)[:300]}") from None
    else:
        raise CheckpointError(f"checkpoint {ckpt} holds neither delta.safetensors nor model.safetensors")
    return base_model
