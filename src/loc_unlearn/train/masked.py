"""Masked updates of value vectors (docs/localizers.md#applying-a-mask).

Only the masked columns of each layer's W_down may change. Instead of training the whole weight with a
gradient mask (a full [d, d_ff] weight gradient, full AdamW state, and decoupled weight decay that moves
"frozen" weights, see docs/localizers.md#applying-a-mask), each layer gets a float32 Parameter `delta_l [d, k_l]` for its k_l
masked columns. The down-proj forward becomes a custom autograd Function that

  * folds the delta into the weight BEFORE the matmul (W_eff = W; W_eff[:, idx] += delta). A separate extra
    matmul (W a + D a_idx) rounds differently under bf16 autocast and drifts from masked training of W;
  * computes in backward only grad_x and grad_delta = grad_out^T @ a[..., idx]: no full weight gradient,
    and it saves only a[..., idx] for backward (activation memory proportional to the mask).

Base weights get requires_grad=False, so the optimizer (and its state) only ever sees the deltas. Weight
decay is applied explicitly to the effective masked weights (`apply_weight_decay`), never elsewhere.
Unmasked mode (mask=None) is plain fine-tuning: every parameter is trainable.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MaskError
from ..models.value_vectors import down_proj_slots, down_proj_weight_param, down_projs, shape


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


def _fold(w: torch.Tensor, idx: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """W with columns idx replaced by W[:, idx] + delta, added in float32 then cast to W's dtype."""
    w_eff = w.clone()
    w_eff[:, idx] = (w[:, idx].float() + delta.float()).to(w.dtype)
    return w_eff


class _MaskedLinear(torch.autograd.Function):
    """y = x @ W_eff^T + b with W_eff = fold(W, idx, delta); gradients for x and delta only."""

    @staticmethod
    def forward(ctx, x, w, bias, idx, delta):
        cdt = _compute_dtype(x)
        xc = x.to(cdt)
        with torch.autocast(x.device.type, enabled=False):
            w_eff = _fold(w, idx, delta).to(cdt)
            out = F.linear(xc, w_eff, None if bias is None else bias.to(cdt))
        # a[..., idx] only: memory proportional to the mask, the rest of x is not needed for grad_delta.
        ctx.save_for_backward(xc[..., idx], w, idx, delta)
        ctx.cdt, ctx.x_dtype = cdt, x.dtype
        return out

    @staticmethod
    def backward(ctx, g):
        x_idx, w, idx, delta = ctx.saved_tensors
        g = g.to(ctx.cdt)
        w_eff = _fold(w, idx, delta).to(ctx.cdt)  # recomputed, not saved: a [d, d_ff] copy per layer is big
        grad_x = (g @ w_eff).to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
        # Same arithmetic as autocast's weight gradient (in the compute dtype), restricted to the k columns.
        grad_delta = (g.reshape(-1, g.shape[-1]).T @ x_idx.reshape(-1, x_idx.shape[-1])).to(delta.dtype)
        return grad_x, None, None, None, grad_delta


def _digest(t: torch.Tensor) -> str:
    t = t.detach().contiguous().cpu()
    return hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's part of `t`: the local shard of an FSDP2 DTensor, `t` itself otherwise.

    FSDP2 shards every parameter on dim 0 with torch.chunk, so the delta [d, k] and its frozen weight
    [d, d_ff] (not transposed) are split into the same rows on every rank: per-column arithmetic that is
    elementwise over rows (weight decay) can run on the local shards as it is."""
    return t.to_local() if hasattr(t, "to_local") else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole of `t`: an FSDP2 DTensor gathered from every rank (a collective: call it on all of them),
    `t` itself otherwise."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


@torch.no_grad()
def merge_columns(vm: torch.Tensor, idx: torch.Tensor, delta: torch.Tensor) -> None:
    """vm[:, idx] += delta, in place, added in float32 and rounded once to vm's dtype: THE merge arithmetic
    (MaskedDelta.merge, a sharded run's gathered state and load_checkpoint all use it, so they agree bit
    for bit). `vm` is a [d, d_ff] value matrix (a view of the weight)."""
    if len(idx):
        vm[:, idx] = (vm[:, idx].float() + delta.float()).to(vm.dtype)


def delta_entries(state: dict[str, torch.Tensor], md: "MaskedDelta") -> list[tuple[int, str, torch.Tensor, torch.Tensor]]:
    """(layer, weight name, idx, delta) of each MaskedDownProj in a gathered model state (its entries are
    `...down_proj.weight`, `...down_proj.idx`, `...down_proj.delta`)."""
    return [(l, name, state[name[:-len("weight")] + "idx"], state[name[:-len("weight")] + "delta"])
            for l, name in md._down_names()]


def merge_state(state: dict[str, torch.Tensor], md: "MaskedDelta") -> dict[str, torch.Tensor]:
    """A gathered model state with MaskedDownProj entries as a plain model state: the deltas merged into
    their weights' masked columns, the `.idx`/`.delta` entries dropped."""
    out = {k: v for k, v in state.items() if not k.endswith((".delta", ".idx"))}
    tr = md._transposed()
    for _, name, idx, delta in delta_entries(state, md):
        w = out[name].clone()
        merge_columns(w.T if tr else w, idx.to(w.device), delta.to(w.device))
        out[name] = w
    return out


class MaskedDownProj(nn.Module):
    """A down-projection whose masked columns train through a float32 delta (PEFT's wrapped-module pattern).

    Registered in place of the layer's down-projection, so every engine (DDP, FSDP2, ZeRO-3) sees, shards,
    gathers and synchronizes `delta` like any parameter. It holds the frozen `weight` (the same Parameter
    object the original module had, so state-dict names do not change: `...down_proj.weight`), the masked
    column indices `idx` as a buffer and `delta [d, k]`. Its own forward uses its own parameters, which is
    what ZeRO-3's per-module gather hooks expect (no access to a child's weight from the parent).
    """

    def __init__(self, base: nn.Module, idx: torch.Tensor, transposed: bool):
        super().__init__()
        self.weight = base.weight  # frozen; [d, d_ff] or, transposed (GPT-2 Conv1D), [d_ff, d]
        self.bias = getattr(base, "bias", None)
        self.transposed = transposed
        self.register_buffer("idx", idx.to(base.weight.device, torch.long))
        d = base.weight.shape[1] if transposed else base.weight.shape[0]
        self.delta = nn.Parameter(torch.zeros(d, len(idx), device=base.weight.device, dtype=torch.float32))
        self.enabled = True  # False: the start model (reference forwards without a second copy)

    def value_matrix(self) -> torch.Tensor:
        return self.weight.T if self.transposed else self.weight

    def forward(self, x):
        w = self.value_matrix()
        if not self.enabled or self.idx.numel() == 0:
            return F.linear(x, w, self.bias)
        return _MaskedLinear.apply(x, w, self.bias, self.idx, self.delta)


class MaskedDelta:
    """Restrict training of `model` to the masked value vectors (mask [L, d_ff] bool), or, with
    mask=None, make every parameter trainable (plain fine-tuning). See the module docstring.

    Masked: each layer's down-projection is replaced by a `MaskedDownProj` (registered on the layer, so
    engines see its delta) until `merge()` folds the deltas into the weights and puts the original modules
    back. `deltas`/`idx` always read the modules, so they follow an engine that swaps parameters (FSDP2
    turns them into DTensors in place)."""

    def __init__(self, model: nn.Module, mask: torch.Tensor | None):
        self.model = model
        self.mask = None if mask is None else torch.as_tensor(mask).bool().cpu()
        self._mods: list[MaskedDownProj] = []
        self._orig: list[tuple[nn.Module, str, nn.Module]] = []  # (parent, attribute, original module)
        self.merged = False
        if self.mask is None:
            for p in model.parameters():
                p.requires_grad_(True)
            return
        L, d_ff = shape(model)
        if tuple(self.mask.shape) != (L, d_ff):
            raise MaskError(f"mask has shape {tuple(self.mask.shape)} but the model "
                            f"({model.config.model_type}) needs [L, d_ff] = [{L}, {d_ff}]")
        for p in model.parameters():
            p.requires_grad_(False)
        transposed = down_proj_weight_param(model, 0)[1]
        for l, (parent, attr, mod) in enumerate(down_proj_slots(model)):
            wrapped = MaskedDownProj(mod, self.mask[l].nonzero().flatten(), transposed)
            setattr(parent, attr, wrapped)
            self._mods.append(wrapped)
            self._orig.append((parent, attr, mod))

    @property
    def deltas(self) -> list[nn.Parameter]:
        return [m.delta for m in self._mods]

    @property
    def idx(self) -> list[torch.Tensor]:
        return [m.idx for m in self._mods]

    def _vm(self, l: int) -> torch.Tensor:
        """W_down of layer l as [d, d_ff] (a view of the weight)."""
        return self._mods[l].value_matrix()

    @property
    def masked(self) -> bool:
        return self.mask is not None

    # ------------------------------------------------------------------ optimizer side
    def parameters(self) -> list[nn.Parameter]:
        if not self.masked:
            return [p for p in self.model.parameters() if p.requires_grad]
        return [d for d in self.deltas if d.numel()]

    @torch.no_grad()
    def apply_weight_decay(self, lr: float, weight_decay: float) -> None:
        """Decoupled decay of the EFFECTIVE masked weights, p <- p (1 - lr wd) with p = W0[:, idx] + delta,
        i.e. delta -= lr wd (W0[:, idx] + delta), exactly what AdamW does to those columns before its
        update. Call before `optimizer.step()` with AdamW(weight_decay=0). Nothing outside the mask decays,
        and, like AdamW, a delta whose grad is None (its layer took no part in the loss, e.g. the layers after
        RMU's steering layer) is skipped. In unmasked mode this is a no-op (use AdamW's own weight_decay)."""
        if not self.masked or lr * weight_decay == 0:
            return
        for l, d in enumerate(self.deltas):
            if d.numel() and d.grad is not None:
                # local shards: rows of the delta and of its weight are split alike (see `local`)
                dl = local(d)
                w0 = local(self._vm(l))[:, self.idx[l]].float()
                dl.sub_(lr * weight_decay * (w0 + dl))

    # ------------------------------------------------------------------ reference model
    @contextmanager
    def disabled(self):
        """Run the start model (RMU reference hidden states) without a second copy of the weights."""
        if not self.masked or self.merged:
            raise RuntimeError("MaskedDelta.disabled() needs an unmerged mask: in unmasked mode the weights themselves "
                               "change, so the start model needs a frozen copy")
        prev = [m.enabled for m in self._mods]
        for m in self._mods:
            m.enabled = False
        try:
            yield self.model
        finally:
            for m, e in zip(self._mods, prev):
                m.enabled = e

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Masked: per layer `idx.<l>` (int64) and `delta.<l>` (float32), gathered in full (a collective
        under a sharding engine: call it on every process). Unmasked: the model's weights (single process;
        the loop gathers sharded models through the engine, engine.full_state_dict)."""
        if not self.masked:
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        sd = {}
        for l, (i, d) in enumerate(zip(self.idx, self.deltas)):
            sd[f"idx.{l}"] = i.detach().cpu().clone()
            sd[f"delta.{l}"] = full(d).detach().cpu().clone()
        return sd

    @torch.no_grad()
    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        if not self.masked:
            self.model.load_state_dict(sd)
            return
        for l, (i, d) in enumerate(zip(self.idx, self.deltas)):
            if f"idx.{l}" not in sd or not torch.equal(sd[f"idx.{l}"].to(i.device), i):
                raise MaskError(f"checkpoint delta for layer {l} was trained on a different mask "
                                f"(idx.{l} differs or is missing)")
            src = sd[f"delta.{l}"].to(local(d).device, d.dtype)
            if hasattr(d, "to_local"):  # FSDP2: this rank's rows of the full delta
                from torch.distributed.tensor import distribute_tensor
                src = distribute_tensor(src, d.device_mesh, d.placements).to_local()
            local(d).copy_(src)

    # ------------------------------------------------------------------ finishing
    @torch.no_grad()
    def merge(self) -> nn.Module:
        """Fold the deltas into the plain weights (only the masked columns are written), restore the
        original module forwards and requires_grad. Returns the model."""
        if self.masked and not self.merged:
            for l in range(len(self._mods)):
                merge_columns(self._vm(l), self.idx[l], self.deltas[l])
            self.restore()
        return self.model

    def restore(self) -> None:
        """Put the original down-projection modules back (their weights are the wrappers' weights) and
        make every parameter trainable again. merge() calls it; so does a sharded run, whose merged
        weights come from the gathered state instead."""
        if self.masked and not self.merged:
            for parent, attr, mod in self._orig:
                setattr(parent, attr, mod)
            for p in self.model.parameters():
                p.requires_grad_(True)
            self._mods, self._orig, self.merged = [], [], True  # self.mask stays: check_unmasked_unchanged needs it
        return self.model

    def snapshot(self) -> dict:
        """sha256 per parameter of what must never change: for each down-proj weight its unmasked
        columns, every other parameter whole. Cheap to keep (no weight copy); see check_unmasked_unchanged."""
        return self._fingerprints(self.mask)

    def _named(self) -> dict[str, torch.Tensor]:
        """The model's parameters by name, without the deltas (they are the trainable part, not the model)."""
        deltas = {id(d) for d in self.deltas}
        return {n: p for n, p in self.model.named_parameters(remove_duplicate=False) if id(p) not in deltas}

    def _fingerprints(self, mask, tensors: dict | None = None) -> dict:
        """Digests of `tensors` ({name: full tensor}; default: the model's own parameters)."""
        tensors = self._named() if tensors is None else tensors
        dp = dict((n, l) for l, n in self._down_names()) if mask is not None else {}
        tr = self._transposed()
        out = {}
        for name, t in tensors.items():
            if name in dp:
                l = dp[name]
                vm = t.T if tr else t
                out[name] = _digest(vm[:, ~mask[l].to(t.device)])
            else:
                out[name] = _digest(t)
        return out

    def check_unmasked_unchanged(self, original, mask: torch.Tensor | None = None, now: dict | None = None) -> None:
        """Assert every unmasked entry (and every non-down-proj parameter) is bit-identical to
        `original`: a `snapshot()` dict, or a {name: tensor} state dict of the start model. `now`: the
        weights to check ({name: tensor}, e.g. the gathered state of a sharded run); default the model's
        own. Works before and after `merge()`."""
        mask = self.mask if mask is None else torch.as_tensor(mask).bool()
        if mask is None:
            raise RuntimeError("check_unmasked_unchanged: no mask (unmasked training changes everything)")
        now = self._fingerprints(mask, now)
        if original and isinstance(next(iter(original.values())), torch.Tensor):
            original = self._fingerprints(mask, original)
        bad = [n for n in now if n in original and now[n] != original[n]]
        missing = [n for n in now if n not in original]
        if bad or missing:
            raise AssertionError(f"masked training changed entries outside the mask in {len(bad)} parameters: "
                                 f"{bad[:5]}{' ...' if len(bad) > 5 else ''}; not in the snapshot: {missing[:5]}")

    def _down_names(self):
        """(layer, parameter name) of every down-proj weight; the names are the same wrapped or not."""
        if getattr(self, "_names_cache", None) is None:
            ids = {id(m.weight): l for l, m in enumerate(down_projs(self.model))}
            self._names_cache = [(l, n) for n, p in self.model.named_parameters(remove_duplicate=False)
                                 for l in [ids.get(id(p))] if l is not None]
        return self._names_cache

    def _transposed(self) -> bool:
        return down_proj_weight_param(self.model, 0)[1]
