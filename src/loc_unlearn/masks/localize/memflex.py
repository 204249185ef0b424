"""MemFlex localization (docs/localizers.md#memflex).

Gradients of the NLL on forget data and on retain data whose answers are corrupted (each answer
token replaced by a random token with probability 1/2; `memflex_copies` copies per example). Per
value vector: c = cos(g_forget[:, i], g_retain[:, i]) and m = mean |g_forget[:, i]|. Candidates have
c < threshold and are ranked by m; if fewer than k pass, the rest is filled by lowest c.

That ranking is expressed as one score so select_topk (and its exact size / tie rules) applies:
candidates get 1 + m / max(m) in [1, 2], non-candidates get -c in [-1, -threshold] (< 1).
"""
import torch
import torch.nn.functional as F

from ...registry import localizer
from .gradient import down_grads, encode_rows, pad_id


def corrupt(items: list[dict], copies: int, vocab: list[int], seed: int) -> list[dict]:
    """`copies` corrupted copies of each item: each answer token (not the prompt, not eos) is
    replaced with prob 1/2 by a uniform token from `vocab`, in inputs and labels alike."""
    g = torch.Generator().manual_seed(int(seed))
    vocab_t = torch.tensor(vocab)
    out = []
    for it in items:
        lo = it["n_prompt"]
        hi = max(lo, min(lo + it["n_answer"], len(it["input_ids"])))  # truncation may cut the answer
        for _ in range(copies):
            ids = torch.tensor(it["input_ids"])
            labels = torch.tensor(it["labels"])
            flip = torch.rand(hi - lo, generator=g) < 0.5
            new = vocab_t[torch.randint(len(vocab), (hi - lo,), generator=g)]
            ids[lo:hi] = torch.where(flip, new, ids[lo:hi])
            labels[lo:hi] = torch.where(flip & (labels[lo:hi] != -100), new, labels[lo:hi])
            out.append(dict(it, input_ids=ids.tolist(), labels=labels.tolist()))
    return out


def memflex_from_grads(g_forget, g_retain, threshold: float) -> torch.Tensor:
    """[L, d_ff] float64 score from per-layer [d, d_ff] gradients (see module docstring)."""
    cos = torch.stack([F.cosine_similarity(gf.double(), gr.double(), dim=0, eps=1e-30)
                       for gf, gr in zip(g_forget, g_retain)])
    m = torch.stack([gf.double().abs().mean(0) for gf in g_forget])
    cand = cos < threshold
    m_max = m[cand].max() if cand.any() else torch.tensor(1.0, dtype=torch.float64)
    return torch.where(cand, 1.0 + m / m_max.clamp_min(1e-300), -cos)


def content_vocab(tokenizer) -> list[int]:
    special = set(tokenizer.all_special_ids or [])
    return [i for i in range(len(tokenizer)) if i not in special]


@localizer("memflex", params={
    "memflex_threshold": (0.92, "MemFlex: candidates have cos(g_forget, g_retain) below this"),
    "memflex_copies": (3, "MemFlex: corrupted copies per example")},
           doc="gradient cosine between forget and corrupted-retain data")
def memflex_scores(lcfg, model, tokenizer, forget_rows, retain_rows):
    pad, vocab, copies = pad_id(tokenizer), content_vocab(tokenizer), lcfg.params["memflex_copies"]
    f_items = corrupt(encode_rows(tokenizer, forget_rows, lcfg.max_length), copies, vocab, lcfg.seed)
    r_items = corrupt(encode_rows(tokenizer, retain_rows, lcfg.max_length), copies, vocab, lcfg.seed + 1)
    gf = down_grads(model, f_items, lcfg.batch_size, pad, "memflex: forget")
    gr = down_grads(model, r_items, lcfg.batch_size, pad, "memflex: retain")
    return memflex_from_grads(gf, gr, lcfg.params["memflex_threshold"]).cpu()
