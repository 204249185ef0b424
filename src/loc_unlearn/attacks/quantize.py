"""Quantization attack (docs/attacks.md#quantization-attack): weight-only round-to-nearest (RTN), simulated in torch.

Each weight is quantized to b-bit integer codes and immediately dequantized again ("fake quantization"),
so the model keeps its dtype and runs anywhere (CPU included) while computing with exactly the values a
b-bit RTN checkpoint would hold. Codes are per GROUP of `group_size` consecutive INPUT weights: the last
dim of a Linear weight `[out, in]` (GPT-2's Conv1D stores `[in, out]` and is transposed for this). When
`in % group_size != 0` the last group of every row is shorter (`in % group_size` weights) and has its
own scale, exactly like a full group; nothing is padded into the statistics.

- symmetric: `s = max|w| / (2^(b-1) - 1)`, `q = clamp(round(w / s), -(2^(b-1)-1), 2^(b-1)-1)`, `w' = q s`
  (2^b - 1 levels, zero exact).
- asymmetric: `lo = min(w_min, 0)`, `hi = max(w_max, 0)`, `s = (hi - lo) / (2^b - 1)`, integer zero point
  `z = round(-lo / s)` in `[0, 2^b - 1]`, `q = clamp(round(w / s) + z, 0, 2^b - 1)`, `w' = (q - z) s`.
  The range is widened to contain 0 (the GPTQ/AutoGPTQ convention) so that the integer zero point lies in
  the code range and 0 is exactly representable; for a group holding both signs (any real weight group
  of useful size) this is plain min/max.
- A zero-range group (all zeros, the only one under both rules, as the range always holds 0) gets
  `s = 1`: its codes are 0 and it dequantizes to exactly 0 (no division by zero, no NaN).

Arithmetic is float64 whatever the weight dtype; the result is cast back to the weight's dtype. Round is
half-to-even (torch.round, like numpy). Quantizing an already quantized tensor returns it unchanged
(symmetric: bit for bit, as the group maximum reproduces itself exactly; asymmetric: the same codes,
values within one unit in the last place of the dtype, because the widened range `(q - z) s` is
recomputed from rounded endpoints). Tests: tests/test_attacks_quantize.py, against a numpy loop.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..errors import UserError

INCLUDE = ("layers", "lm_head", "embed")
"""What `quantize_model(include=...)` can name: the decoder layers' linear weights, the output head,
the input embedding."""


def _qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 16:
        raise UserError(f"quantization bits={bits!r}: expected an integer in 2..16 (config key attack.bits)")
    return (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)


def _codes_groups(g: torch.Tensor, bits: int, symmetric: bool):
    """RTN over the last dim of `g` [..., n] (float64): (codes, scale [..., 1], zero [..., 1])."""
    qmin, qmax = _qrange(bits, symmetric)
    if symmetric:
        scale = g.abs().amax(-1, keepdim=True) / qmax
        zero = torch.zeros_like(scale)
    else:
        lo = g.amin(-1, keepdim=True).clamp(max=0)
        hi = g.amax(-1, keepdim=True).clamp(min=0)
        scale = (hi - lo) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # zero-range group: codes 0, value 0
    if not symmetric:
        zero = torch.round(-lo / scale).clamp(qmin, qmax)
    q = torch.clamp(torch.round(g / scale) + zero, qmin, qmax)
    return q, scale, zero


def quantize_codes(w: torch.Tensor, bits: int, group_size: int = 128, symmetric: bool = True):
    """Integer codes of `w` under RTN (module docstring): a list of (codes, scale, zero) per group block:
    first the full groups `[..., n_full, group_size]`, then (if any) the shorter tail `[..., 1, rest]`.
    For tests and inspection; `quantize_tensor` is what models use."""
    if group_size < 1:
        raise UserError(f"quantization group_size={group_size}: expected >= 1 (config key attack.group_size)")
    if w.dim() < 1 or w.shape[-1] == 0:
        raise UserError(f"cannot quantize a tensor of shape {tuple(w.shape)}")
    x = w.detach().to(torch.float64)
    n = x.shape[-1]
    n_full = n // group_size
    out = []
    if n_full:
        out.append(_codes_groups(x[..., : n_full * group_size].reshape(*x.shape[:-1], n_full, group_size),
                                 bits, symmetric))
    if n % group_size:
        out.append(_codes_groups(x[..., n_full * group_size:].unsqueeze(-2), bits, symmetric))
    return out


def quantize_tensor(w: torch.Tensor, bits: int, group_size: int = 128, symmetric: bool = True) -> torch.Tensor:
    """RTN quantize-then-dequantize `w` over groups of `group_size` consecutive entries of its LAST dim
    (the input dim of a Linear weight `[out, in]`; a shorter last group when `in % group_size != 0`).
    Returns a new tensor of `w`'s dtype, shape and device; `w` is not modified. See the module docstring."""
    parts = []
    for q, scale, zero in quantize_codes(w, bits, group_size, symmetric):
        parts.append(((q - zero) * scale).reshape(*w.shape[:-1], -1))
    return torch.cat(parts, -1).to(w.dtype) if len(parts) > 1 else parts[0].to(w.dtype)


# ----------------------------------------------------------------------------- models


def _is_conv1d(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf")  # transformers.pytorch_utils.Conv1D (GPT-2)


def quantizable_weights(model: nn.Module, include: Iterable[str] = ("layers",)) -> list[tuple[str, nn.Parameter, bool]]:
    """(name, weight Parameter, transposed) of every weight `quantize_model` touches, each tensor once.

    - "layers" (default): every `nn.Linear` (and GPT-2 `Conv1D`, stored `[in, out]`: transposed=True) inside
      the decoder layers: attention q/k/v/o and the MLP, i.e. what weight-only RTN/GPTQ/AWQ checkpoints
      quantize. Norms and biases are never quantized.
    - "lm_head": the output projection `[vocab, d]` (groups over d). Off by default, as in those formats:
      the head is small next to the layers and its errors hit every logit directly.
    - "embed": the input embedding `[vocab, d]` (groups over d, one token's vector at a time). Off by
      default: embeddings are looked up rather than multiplied.
    A tied lm_head shares its Parameter with the embedding: it is listed once (under the first name that
    includes it), so it is quantized once, and the embedding and the head keep seeing the same values.
    Naming either "lm_head" or "embed" quantizes the shared tensor for both; say so in any report.
    """
    from ..models.value_vectors import _layers, _unwrap

    include = tuple(include)
    bad = [i for i in include if i not in INCLUDE]
    if bad or not include:
        raise UserError(f"quantize include={list(include)}: expected a non-empty subset of {list(INCLUDE)}")
    model = _unwrap(model)
    found: list[tuple[str, nn.Parameter, bool]] = []
    seen: set[int] = set()

    def add(name, p, transposed):
        if p is None or id(p) in seen:
            return
        seen.add(id(p))
        found.append((name, p, transposed))

    if "layers" in include:
        layers = _layers(model)
        prefix = next((n for n, m in model.named_modules() if m is layers), "layers")
        for name, m in layers.named_modules():
            if isinstance(m, nn.Linear) or _is_conv1d(m):
                add(f"{prefix}.{name}.weight", m.weight, _is_conv1d(m))
    if "embed" in include:
        emb = model.get_input_embeddings()
        add(next(n for n, m in model.named_modules() if m is emb) + ".weight", emb.weight, False)
    if "lm_head" in include:
        head = model.get_output_embeddings()
        if head is None:
            raise UserError(f"{type(model).__name__} has no output head to quantize (include=lm_head)")
        add(next(n for n, m in model.named_modules() if m is head) + ".weight", head.weight, _is_conv1d(head))
    return found


@torch.no_grad()
def quantize_model(model: nn.Module, bits: int, group_size: int = 128, symmetric: bool = True,
                   include: Iterable[str] = ("layers",)) -> dict:
    """Replace, in place, every weight chosen by `include` (see `quantizable_weights`: by default the
    decoder layers' linear weights; embeddings and lm_head are kept in full precision unless named) by
    its RTN quantize-dequantize (`quantize_tensor`, groups over the input dim). Returns a summary:
    bits, group_size, symmetric, include, tensors (names), n_weights, tied_head (whether a tied
    embedding/head tensor was among them), rel_error (||W' - W||_F / ||W||_F over all of them)."""
    weights = quantizable_weights(model, include)
    err = ref = 0.0
    n = 0
    for _, p, transposed in weights:
        w = p.data.T if transposed else p.data
        wq = quantize_tensor(w, bits, group_size, symmetric)
        err += float((wq.double() - w.double()).pow(2).sum())
        ref += float(w.double().pow(2).sum())
        w.copy_(wq)
        n += p.numel()
    from ..models.value_vectors import _unwrap

    m = _unwrap(model)
    emb, head = m.get_input_embeddings(), m.get_output_embeddings()
    tied = head is not None and head.weight is emb.weight
    return {"bits": bits, "group_size": group_size, "symmetric": symmetric, "include": list(include),
            "tensors": [name for name, _, _ in weights], "n_weights": n,
            "tied_head": bool(tied and any(p is emb.weight for _, p, _ in weights)),
            "rel_error": (err / ref) ** 0.5 if ref > 0 else 0.0}


@torch.no_grad()
def quantize_model_nf4(model: nn.Module, blocksize: int = 64, include: Iterable[str] = ("layers",)) -> dict:
    """NF4 (bitsandbytes' 4-bit NormalFloat, absmax per block of `blocksize`) quantize-dequantize of the
    same weights as `quantize_model`, in place, through `bitsandbytes.functional.quantize_4bit` /
    `dequantize_4bit`. Needs bitsandbytes and a CUDA device (raises UserError otherwise); bitsandbytes is
    imported only here. The model must already be on the GPU. Blocks run over the flattened weight in
    row-major order, i.e. over consecutive input weights like RTN groups (bitsandbytes' own layout)."""
    if not torch.cuda.is_available():
        raise UserError("NF4 quantization needs a CUDA device (bitsandbytes); none is available. Use RTN "
                        "(attack.bits=4) instead, which runs anywhere.")
    try:
        import bitsandbytes.functional as bnbf
    except ImportError:
        raise UserError("NF4 quantization needs the bitsandbytes package (pip install bitsandbytes); "
                        "RTN (attack.bits=4) needs nothing extra") from None
    weights = quantizable_weights(model, include)
    err = ref = 0.0
    for _, p, transposed in weights:
        if p.device.type != "cuda":
            raise UserError(f"NF4 quantization: the model is on {p.device}, it needs the GPU (command line: "
                            f"device=auto or device=cuda; Python: utils.place(model, 'cuda') first)")
        w = (p.data.T if transposed else p.data).contiguous()
        packed, state = bnbf.quantize_4bit(w, blocksize=blocksize, quant_type="nf4")
        wq = bnbf.dequantize_4bit(packed, state, quant_type="nf4").to(w.dtype).reshape(w.shape)
        err += float((wq.double() - w.double()).pow(2).sum())
        ref += float(w.double().pow(2).sum())
        (p.data.T if transposed else p.data).copy_(wq)
    return {"bits": "nf4", "group_size": blocksize, "symmetric": True, "include": list(include),
            "tensors": [name for name, _, _ in weights], "n_weights": sum(p.numel() for _, p, _ in weights),
            "rel_error": (err / ref) ** 0.5 if ref > 0 else 0.0}


# ----------------------------------------------------------------------------- the attack


def _es_summary(model, tokenizer, eval_sets: dict, batch_size: int, es_floor: str) -> dict:
    from ..evaluate.token_metrics import token_metrics

    out = {}
    for name, rows in eval_sets.items():
        # answer_only: ES needs the answer pass alone (the paraphrased/perturbed passes would be thrown away)
        es = token_metrics(model, tokenizer, rows, batch_size=batch_size, es_floor=es_floor, answer_only=True)["es"]
        out[f"{name}_es"] = sum(es) / len(es)
    if "forget_es" in out:
        out["FS"] = 1.0 - out["forget_es"]
    if "retain_es" in out:
        out["RS"] = out["retain_es"]
    return out


@torch.no_grad()
def quantization_attack(model, tokenizer, eval_sets: dict, bits: Iterable = (4, 8), group_size: int = 128,
                        symmetric: bool = True, include: Iterable[str] = ("layers",), batch_size: int = 16,
                        es_floor: str = "none", nf4_blocksize: int = 64) -> dict:
    """FS and RS (docs/metrics.md#forget-and-retain-scores-fs-rs) of `model` before and after each quantization in `bits` (ints for RTN with
    `group_size`/`symmetric`, or "nf4"), docs/attacks.md#quantization-attack. `eval_sets` maps names to rows ("forget" gives FS,
    "retain" gives RS; any other set adds `<name>_es`). The model's weights are restored after each
    setting, so it is left as it came. Returns {"none": metrics, "<bits>": metrics | quantize summary}."""
    res = {"none": _es_summary(model, tokenizer, eval_sets, batch_size, es_floor)}
    weights = quantizable_weights(model, include)
    saved = [p.data.detach().to("cpu", copy=True) for _, p, _ in weights]  # on CPU: no extra GPU memory
    try:
        for b in bits:
            if str(b).lower() == "nf4":
                summ = quantize_model_nf4(model, nf4_blocksize, include)
            else:
                summ = quantize_model(model, int(b), group_size, symmetric, include)
            summ.pop("tensors")
            res[str(b).lower()] = _es_summary(model, tokenizer, eval_sets, batch_size, es_floor) | {"quantize": summ}
            for (_, p, _), s in zip(weights, saved):
                p.data.copy_(s)
    finally:
        for (_, p, _), s in zip(weights, saved):
            p.data.copy_(s)
    return res
