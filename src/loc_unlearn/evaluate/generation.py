"""Batched greedy generation and ROUGE-L recall (docs/metrics.md#rouge-l-recall).

Prompts are left-padded so every row's next token sits at the last position; the attention mask is
built from lengths (never from pad_token_id, which may equal eos). Generation stops per row at eos /
end-of-turn or after max_new_tokens.
"""
from __future__ import annotations

import torch

from ..data.formatting import encode_qa, pad_id as pad_id_of
from ..utils import eval_mode, progress


def prompt_ids(tokenizer, question: str) -> list[int]:
    """Exactly the prompt tokens teacher-forced metrics use (encode_qa's prompt part)."""
    it = encode_qa(tokenizer, question, "x", None)  # the answer is a placeholder; only the prompt is kept
    return it["input_ids"][: it["n_prompt"]]


def stop_ids(model, tokenizer) -> list[int]:
    """eos plus any end-of-turn ids the model's generation config declares."""
    ids = {tokenizer.eos_token_id}
    gc = getattr(model, "generation_config", None)
    extra = getattr(gc, "eos_token_id", None) if gc is not None else None
    ids |= set(extra if isinstance(extra, (list, tuple)) else [extra])
    return sorted(i for i in ids if i is not None)


@torch.inference_mode()
def generate_ids(model, prompts: list[list[int]], max_new_tokens: int, pad_id: int, stop: list[int],
                 batch_size: int = 16, desc: str = "generate") -> list[list[int]]:
    """Greedy continuations (token ids, stop token excluded) of tokenized prompts, in input order."""
    dev = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    out = [None] * len(prompts)
    with eval_mode(model):
        for s in progress(range(0, len(order), batch_size), desc=desc, leave=False):
            idx = order[s: s + batch_size]
            T = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), T), int(pad_id), dtype=torch.long)
            attn = torch.zeros((len(idx), T), dtype=torch.long)
            for b, i in enumerate(idx):
                n = len(prompts[i])
                ids[b, T - n:] = torch.tensor(prompts[i], dtype=torch.long)
                attn[b, T - n:] = 1
            gen = model.generate(input_ids=ids.to(dev), attention_mask=attn.to(dev), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=stop, pad_token_id=int(pad_id),
                                 num_beams=1, temperature=None, top_p=None, top_k=None)
            for b, i in enumerate(idx):
                seq = gen[b, T:].tolist()
                cut = next((k for k, t in enumerate(seq) if t in stop), len(seq))
                out[i] = seq[:cut]
    return out


def generate(model, tokenizer, questions: list[str], max_new_tokens: int = 200, batch_size: int = 16) -> list[str]:
    """Greedy answers to `questions` (chat-formatted like training), decoded without special tokens."""
    pad_id = pad_id_of(tokenizer)
    prompts = [prompt_ids(tokenizer, q) for q in questions]
    seqs = generate_ids(model, prompts, max_new_tokens, pad_id, stop_ids(model, tokenizer), batch_size)
    return [tokenizer.decode(s, skip_special_tokens=True).strip() for s in seqs]


_SCORER = None


def rouge_l_recall(preds: list[str], refs: list[str]) -> list[float]:
    """ROUGE-L recall of each prediction against its reference (rouge_score, use_stemmer=True)."""
    global _SCORER
    from rouge_score import rouge_scorer

    if _SCORER is None:
        _SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    if len(preds) != len(refs):
        raise ValueError(f"rouge_l_recall: {len(preds)} predictions vs {len(refs)} references")
    return [float(_SCORER.score(r, p)["rougeL"].recall) for p, r in zip(preds, refs)]
