"""Masked updates of value vectors (SPEC §6 "Applying a mask").

Only the masked columns of each layer's W_down may change. Instead of training the whole weight with a
gradient mask (a full [d, d_ff] weight gradient, full AdamW state, and decoupled weight decay that moves
"frozen" weights, see ENVIRONMENT.md), each layer gets a float32 Parameter `delta_l [d, k_l]` for its k_l
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
import types
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MaskError
from ..models.value_vectors import down_proj_weight_param, down_projs, shape, value_matrix


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


class MaskedDelta:
    """Restrict training of `model` to the masked value vectors (mask [L, d_ff] bool), or, with
    mask=None, make every parameter trainable (plain fine-tuning). See the module docstring."""

    def __init__(self, model: nn.Module, mask: torch.Tensor | None):
        self.model = model
        self.mask = None if mask is None else torch.as_tensor(mask).bool().cpu()
        self.idx: list[torch.Tensor] = []
        self.deltas: list[nn.Parameter] = []
        self._mods: list[nn.Module] = []
        self._w: list[tuple[nn.Parameter, bool]] = []
        self._enabled = True
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
        for l, mod in enumerate(down_projs(model)):
            # looked up once: the adapter walks every layer, too slow to call inside each forward
            self._w.append(down_proj_weight_param(model, l))
            w = self._vm(l)
            idx = self.mask[l].nonzero().flatten().to(w.device)
            delta = nn.Parameter(torch.zeros(w.shape[0], len(idx), device=w.device, dtype=torch.float32))
            self.idx.append(idx)
            self.deltas.append(delta)
            self._mods.append(mod)
            if len(idx):
                mod.forward = types.MethodType(self._make_forward(l), mod)

    def _vm(self, l: int) -> torch.Tensor:
        """W_down of layer l as [d, d_ff] (a view of the weight)."""
        w, transposed = self._w[l]
        return w.T if transposed else w

    @property
    def masked(self) -> bool:
        return self.mask is not None

    def _make_forward(self, l: int):
        md = self

        def forward(mod, x):
            w = md._vm(l)
            bias = getattr(mod, "bias", None)
            if not md._enabled:  # the start model: plain weights
                return F.linear(x, w, bias)
            return _MaskedLinear.apply(x, w, bias, md.idx[l], md.deltas[l])
        return forward

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
                w0 = self._vm(l)[:, self.idx[l]].float()
                d.sub_(lr * weight_decay * (w0 + d))

    # ------------------------------------------------------------------ reference model
    @contextmanager
    def disabled(self):
        """Run the start model (RMU reference hidden states) without a second copy of the weights."""
        if not self.masked or self.merged:
            raise RuntimeError("MaskedDelta.disabled() needs an unmerged mask: in unmasked mode the weights themselves "
                               "change, so the start model needs a frozen copy")
        prev, self._enabled = self._enabled, False
        try:
            yield self.model
        finally:
            self._enabled = prev

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Masked: per layer `idx.<l>` (int64) and `delta.<l>` (float32). Unmasked: the model's weights."""
        if not self.masked:
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        sd = {}
        for l, (i, d) in enumerate(zip(self.idx, self.deltas)):
            sd[f"idx.{l}"] = i.detach().cpu().clone()
            sd[f"delta.{l}"] = d.detach().cpu().clone()
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
            d.copy_(sd[f"delta.{l}"])

    # ------------------------------------------------------------------ finishing
    @torch.no_grad()
    def merge(self) -> nn.Module:
        """Fold the deltas into the plain weights (only the masked columns are written), restore the
        original module forwards and requires_grad. Returns the model."""
        if self.masked and not self.merged:
            for l, mod in enumerate(self._mods):
                if len(self.idx[l]):
                    w = self._vm(l)
                    w[:, self.idx[l]] = (w[:, self.idx[l]].float() + self.deltas[l].float()).to(w.dtype)
                    del mod.forward  # drop the instance attribute: the class forward is back
            for p in self.model.parameters():
                p.requires_grad_(True)
            self._mods, self.merged = [], True  # self.mask stays: check_unmasked_unchanged needs it
        return self.model

    def snapshot(self) -> dict:
        """sha256 per parameter of what must never change: for each down-proj weight its unmasked
        columns, every other parameter whole. Cheap to keep (no weight copy); see check_unmasked_unchanged."""
        return self._fingerprints(self.mask)

    def _fingerprints(self, mask) -> dict:
        dp = {id(m.weight): l for l, m in enumerate(down_projs(self.model))} if mask is not None else {}
        out = {}
        for name, p in self.model.named_parameters(remove_duplicate=False):
            if id(p) in dp:
                l = dp[id(p)]
                out[name] = _digest(value_matrix(self.model, l)[:, ~mask[l].to(p.device)])
            else:
                out[name] = _digest(p)
        return out

    def check_unmasked_unchanged(self, original, mask: torch.Tensor | None = None) -> None:
        """Assert every unmasked entry (and every non-down-proj parameter) is bit-identical to
        `original`: a `snapshot()` dict, or a {name: tensor} state dict of the start model.
        Works before and after `merge()`."""
        mask = self.mask if mask is None else torch.as_tensor(mask).bool()
        if mask is None:
            raise RuntimeError("check_unmasked_unchanged: no mask (unmasked training changes everything)")
        now = self._fingerprints(mask)
        if original and isinstance(next(iter(original.values())), torch.Tensor):
            dp = {n: l for l, n in self._down_names()}
            tr = self._transposed()
            ref = {}
            for name, t in original.items():
                if name in dp:
                    t = t.T if tr else t
                    ref[name] = _digest(t[:, ~mask[dp[name]].to(t.device)])
                else:
                    ref[name] = _digest(t)
            original = ref
        bad = [n for n in now if n in original and now[n] != original[n]]
        missing = [n for n in now if n not in original]
        if bad or missing:
            raise AssertionError(f"masked training changed entries outside the mask in {len(bad)} parameters: "
                                 f"{bad[:5]}{' ...' if len(bad) > 5 else ''}; not in the snapshot: {missing[:5]}")

    def _down_names(self):
        ids = {id(m.weight): l for l, m in enumerate(down_projs(self.model))}
        return [(l, n) for n, p in self.model.named_parameters(remove_duplicate=False)
                for l in [ids.get(id(p))] if l is not None]

    def _transposed(self) -> bool:
        w = down_projs(self.model)[0].weight
        return w.shape != value_matrix(self.model, 0).shape
