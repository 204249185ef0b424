"""Norm localization (extra, docs/localizers.md#norm): S_{l,i} = ||v_{l,i}||_2, or, with a reference
model, S_{l,i} = ||v_{l,i} - v^ref_{l,i}||_2.

The sanity row of the localization check (docs/studies.md#step-5-localization-check): an injection that inflates the norms of
V_tgt is recovered by the plain norm, and with the reference theta_r (theta_o differs from it only in
V_tgt columns) the difference norm recovers V_tgt exactly, whatever the norms themselves are. If a
localizer cannot beat this row on a task built this way, its scores do not see the injected change.

The reference is `localize.reference` (config): a model folder (e.g. a theta_r run's `model/`), loaded
once on the CPU in the scored model's dtype (the whole model: peak memory is one extra model copy).
From Python, `norm_scores(..., reference=model)` also takes a loaded model. No forget/retain data is
used.
"""
from __future__ import annotations

import torch

from ...errors import UserError
from ...models.value_vectors import fingerprint, shape, value_matrix
from ...registry import localizer

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _load_reference(path: str, model):
    from ...models.load import load_model

    dtype = _DTYPE_NAMES.get(value_matrix(model, 0).dtype, "float32")
    # Not placed on the `device` setting (utils.place) on purpose: the reference never runs a forward,
    # only its W_down columns are read (and moved to the CPU for the norms anyway), so it stays on the CPU
    # and leaves the GPU's memory to the scored model.
    ref, _ = load_model(path, dtype=dtype)
    return ref


@localizer("norm", uses_reference=True, doc="value-vector norm, or its distance to localize.reference")
def norm_scores(lcfg, model, tokenizer, forget_rows, retain_rows, reference=None):
    """[L, d_ff] float64 column norms of W_down (minus the reference's W_down when one is given)."""
    if reference is None and getattr(lcfg, "reference", ""):
        reference = _load_reference(lcfg.reference, model)
    if reference is not None and fingerprint(reference) != fingerprint(model):
        where = f" {lcfg.reference}" if getattr(lcfg, "reference", "") else ""
        raise UserError(f"localize.reference{where}: model {fingerprint(reference)} does not match the model being "
                        f"localized {fingerprint(model)}; the reference must have the same architecture and shape")
    L, _ = shape(model)
    out = []
    with torch.no_grad():
        for l in range(L):
            v = value_matrix(model, l).detach().cpu().double()
            if reference is not None:
                v = v - value_matrix(reference, l).detach().cpu().double()
            out.append(v.norm(dim=0))
    return torch.stack(out)
