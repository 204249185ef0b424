"""A mask over value vectors (docs/localizers.md#masks): a bool tensor [L, d_ff], True = that column of W_down may change.

Saved as safetensors (tensor `mask`, bool) with string metadata; every metadata value is stored as
a JSON string so numbers and the fingerprint dict round-trip with their types. Loading never
unpickles anything: a file that is not a safetensors mask is a MaskError naming the file.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import MaskError
from ..utils import save_safetensors_atomic

class Mask:
    def __init__(self, mask: torch.Tensor, meta: dict | None = None):
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
            got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise MaskError(f"a mask must be a bool tensor of shape [L, d_ff]; got {got}")
        self.mask = mask.detach().cpu()
        self.meta = dict(meta or {})
        self.path = ""  # set by load(); used in error messages only

    # ------------------------------------------------------------------ basics
    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mask.shape)

    @property
    def count(self) -> int:
        return int(self.mask.sum())

    @property
    def ratio(self) -> float:
        return self.count / self.mask.numel()

    def per_layer_counts(self) -> list[int]:
        return self.mask.sum(dim=1).tolist()

    def __repr__(self):
        return f"Mask(shape={self.shape}, count={self.count}, method={self.meta.get('method')!r})"

    # ------------------------------------------------------------------ set ops / overlap
    def _other(self, other) -> torch.Tensor:
        m = other.mask if isinstance(other, Mask) else other
        if tuple(m.shape) != self.shape:
            raise MaskError(f"mask shapes differ: {self.shape} vs {tuple(m.shape)}")
        return m.bool().cpu()

    def __and__(self, other):
        return Mask(self.mask & self._other(other), {"method": "and"})

    def __or__(self, other):
        return Mask(self.mask | self._other(other), {"method": "or"})

    def __invert__(self):
        return Mask(~self.mask, {"method": "not"})

    def __eq__(self, other):
        return isinstance(other, Mask) and self.shape == other.shape and bool(torch.equal(self.mask, other.mask))

    __hash__ = None

    def jaccard(self, other) -> float:
        o = self._other(other)
        union = int((self.mask | o).sum())
        return int((self.mask & o).sum()) / union if union else 1.0

    def precision_recall(self, ref) -> dict:
        """{precision: |self & ref| / |self|, recall: |self & ref| / |ref|} (ref: the true region, e.g. V_tgt)."""
        r = self._other(ref)
        hit = int((self.mask & r).sum())
        n_self, n_ref = self.count, int(r.sum())
        return {"precision": hit / n_self if n_self else 0.0, "recall": hit / n_ref if n_ref else 0.0}

    # ------------------------------------------------------------------ io
    def save(self, path: str | Path) -> Path:
        meta = {k: json.dumps(v, sort_keys=True) for k, v in self.meta.items()}
        return save_safetensors_atomic({"mask": self.mask}, path, metadata=meta)

    @classmethod
    def load(cls, path: str | Path, expect_shape=None) -> "Mask":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise MaskError(f"mask file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
                raw_meta = f.metadata() or {}
                t = f.get_tensor("mask") if "mask" in keys else None
        except Exception as e:  # safetensors raises its own error types for garbage / pickles / truncation
            raise MaskError(f"mask file {path} is not a safetensors file ({type(e).__name__}: {e}); "
                            f"expected a safetensors file with a bool tensor 'mask' [L, d_ff]") from None
        if t is None:
            raise MaskError(f"mask file {path} has no tensor 'mask' (found {keys}); expected a bool tensor 'mask' [L, d_ff]")
        if t.dtype != torch.bool or t.dim() != 2:
            raise MaskError(f"mask file {path}: tensor 'mask' is {t.dtype} {tuple(t.shape)}; expected bool [L, d_ff]")
        meta = {}
        for k, v in raw_meta.items():
            try:
                meta[k] = json.loads(v)
            except json.JSONDecodeError:
                meta[k] = v  # foreign metadata written as plain strings
        m = cls(t, meta)
        if expect_shape is not None and m.shape != tuple(expect_shape):
            raise MaskError(f"mask file {path} has shape {m.shape} (layers, d_ff); expected {tuple(expect_shape)} "
                            f"for this model (fingerprint in file: {meta.get('fingerprint')})")
        m.path = str(path)
        return m

    def check_compatible(self, model) -> None:
        """MaskError if this mask does not fit `model`'s value vectors (shape [L, d_ff])."""
        from ..models.value_vectors import fingerprint, shape

        want = tuple(shape(model))
        if self.shape != want:
            src = self.path or "<in memory>"
            raise MaskError(f"mask {src} has shape {self.shape} (layers, d_ff) from model {self.meta.get('fingerprint')}; "
                            f"this model needs {want} ({fingerprint(model)})")
