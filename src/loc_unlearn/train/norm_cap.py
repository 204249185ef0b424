"""A norm cap for masked injection (`inject.max_norm_ratio`, issue 11).

Masked injection at a high learning rate inflates the norms of V_tgt's value vectors (the old tiny
recipe: 7x), which makes V_tgt findable by norm alone and lets Oracle edit unusually large columns.
`norm_cap(r)` returns a post-step hook for `loop.train` that projects every trained column back onto
the ball ||v|| <= r ||v_start|| (v_start = the column before training, i.e. theta_r's). It edits only
MaskedDelta's deltas, so nothing outside the mask can change (the loop's bit-for-bit check still runs).
The projection is a deterministic function of the state, so a resumed run ends identical.
"""
from __future__ import annotations

import torch

from ..errors import UserError
from ..models.value_vectors import value_matrix


def _project_sharded(d, vm, idx, ratio: float) -> None:
    """The same projection on FSDP2 shards: delta and weight are split into the same rows on every rank
    (masked.local), so each rank sums its rows' squares, one all-reduce gives the column norms."""
    import torch.distributed as dist

    from .masked import local

    dl = local(d)
    w0 = local(vm)[:, idx].float()
    eff = w0 + dl
    sq = torch.stack([(w0 * w0).sum(0), (eff * eff).sum(0)])
    dist.all_reduce(sq, group=d.device_mesh.get_group())
    scale = (ratio * sq[0].sqrt() / sq[1].sqrt().clamp_min(1e-12)).clamp(max=1.0)
    dl.copy_(eff * scale - w0)


def norm_cap(ratio: float):
    """Hook `fn(masked_delta)` scaling each masked column down to at most `ratio` x its start norm."""
    if not ratio > 0:
        raise UserError(f"inject.max_norm_ratio must be > 0 (0 = off), got {ratio}")

    @torch.no_grad()
    def project(md) -> None:
        if not md.masked:
            raise UserError("inject.max_norm_ratio needs masked training (a mask)")
        for l, d in enumerate(md.deltas):
            if not d.numel():
                continue
            if hasattr(d, "device_mesh"):  # FSDP2: this rank's rows, column norms summed over the ranks
                _project_sharded(d, md._vm(l), md.idx[l], ratio)
                continue
            # Before merge() the module weight still holds the start values: W0[:, idx].
            w0 = value_matrix(md.model, l)[:, md.idx[l]].float()
            eff = w0 + d
            cap = ratio * w0.norm(dim=0)
            scale = (cap / eff.norm(dim=0).clamp_min(1e-12)).clamp(max=1.0)
            d.copy_(eff * scale - w0)
    return project
