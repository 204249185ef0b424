"""Gradient localization (docs/localizers.md#gradient, extra): S_{l,i} = ||g_forget[:, i]||_2, g = dNLL/dW_down^l.

Also the shared gradient machinery used by memflex.py and wagle.py: encoding rows, length batches,
and `down_grads`, the float32 gradient of the mean answer-token NLL w.r.t. every W_down.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ...data.formatting import collate, encode_rows, length_batches, pad_id  # noqa: F401  (pad_id: memflex, wagle)
from ...models.value_vectors import down_proj_weight_param, shape
from ...utils import eval_mode, progress
from ...registry import localizer


def batches(items: list[dict], batch_size: int, pad: int, device):
    """Collated batches in length order (deterministic; no shuffling needed for sums)."""
    for idx in length_batches([len(it["input_ids"]) for it in items], batch_size, shuffle=False, seed=0):
        b = collate([items[i] for i in idx], pad)
        yield {k: v.to(device) for k, v in b.items()}


def device_of(model):
    return next(model.parameters()).device


def nll_sum(model, batch) -> tuple[torch.Tensor, int]:
    """Sum of next-token NLL over label positions (answer + eos, the training loss) in float32."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    keep = labels != -100
    # Only label positions go through the float32 log-softmax (memory: not [B, T, V] in fp32).
    lg = logits[:, :-1][keep].float()
    return F.cross_entropy(lg, labels[keep], reduction="sum"), int(keep.sum())


@contextmanager
def only_down_grads(model):
    """Only the down-proj weights require grad inside; flags, grads and train/eval mode restored after."""
    L, _ = shape(model)
    ws = [down_proj_weight_param(model, l)[0] for l in range(L)]
    flags = {p: p.requires_grad for p in model.parameters()}
    old_grads = {p: p.grad for p in model.parameters()}
    with eval_mode(model):  # no dropout: scores are deterministic
        for p in model.parameters():
            p.requires_grad_(False)
            p.grad = None
        for w in ws:
            w.requires_grad_(True)
        try:
            yield ws
        finally:
            for p, f in flags.items():
                p.requires_grad_(f)
                p.grad = old_grads[p]


def down_grads(model, items: list[dict], batch_size: int, pad: int, desc: str = "gradients") -> list[torch.Tensor]:
    """Per layer, the float32 [d, d_ff] gradient of the mean answer-token NLL over all `items`.

    Token-weighted over the whole set (sum of token NLLs / number of tokens), so the result does
    not depend on batch size. Accumulated in float32 even when the model is bf16.
    """
    L, _ = shape(model)
    transposed = down_proj_weight_param(model, 0)[1]
    acc = None
    n_tok = 0
    with only_down_grads(model) as ws:
        bs = list(batches(items, batch_size, pad, device_of(model)))
        for b in progress(bs, desc=desc, leave=False):
            loss, n = nll_sum(model, b)
            loss.backward()
            n_tok += n
            g = [w.grad.float() for w in ws]
            acc = g if acc is None else [a.add_(x) for a, x in zip(acc, g)]
            for w in ws:
                w.grad = None
    if acc is None:
        raise ValueError("no examples to compute gradients on")
    # Value-matrix orientation [d, d_ff] (GPT-2 stores the weight transposed).
    return [(a.T if transposed else a) / max(n_tok, 1) for a in acc]


@localizer("gradient", doc="norm of the forget-NLL gradient of each value vector")
def gradient_scores(lcfg, model, tokenizer, forget_rows, retain_rows):
    g = down_grads(model, encode_rows(tokenizer, forget_rows, lcfg.max_length), lcfg.batch_size,
                   pad_id(tokenizer), desc="gradient: forget")
    return torch.stack([x.norm(dim=0) for x in g]).cpu()
