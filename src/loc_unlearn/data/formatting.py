"""QA -> token ids, labels and batches (docs/data.md#prompt-and-answer-formatting: labels -100 on the prompt, eos trained but
excluded from metrics, attention mask from lengths, never from pad_token_id)."""
from __future__ import annotations

import random
import weakref

import torch

from ..errors import DataError

IGNORE = -100


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_text(tokenizer, question: str) -> str:
    """The question as the model sees it: its chat template (with the generation prompt) if it has
    one, else the plain TOFU-style `Question: {q}\\nAnswer:`."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
    return f"Question: {question}\nAnswer:"


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


# Evaluation encodes each question once per answer variant (answer, paraphrase, 5 perturbed): rendering a
# chat template is slow, so prompt ids are cached per tokenizer (keyed by the template too).
_PROMPTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _prompt_ids(tokenizer, question: str, chat: bool) -> list[int]:
    cache = _PROMPTS.setdefault(tokenizer, {})
    key = (question, getattr(tokenizer, "chat_template", None) if chat else None)
    if key not in cache:
        if len(cache) > 100_000:
            cache.clear()
        cache[key] = _ids(tokenizer, prompt_text(tokenizer, question), special=not chat)
    return list(cache[key])


def encode_qa(tokenizer, question: str, answer: str, max_length: int | None = None) -> dict:
    """Prompt ids + answer ids + eos id, with labels -100 on the prompt (contracts.md, docs/data.md#prompt-and-answer-formatting).

    Prompt and answer are tokenized separately so the boundary is clean (no token straddles it and
    the number of answer tokens does not depend on the question). A chat-template prompt already
    holds its own special tokens (bos), so it is tokenized without adding more; the plain prompt gets
    the tokenizer's usual ones. Truncation to `max_length` keeps the whole prompt and cuts the answer;
    a cut answer gets no eos (training "stop here" mid-sentence would teach early stopping).
    """
    return encode_fit(tokenizer, question, answer, max_length)[0]


def encode_fit(tokenizer, question: str, answer: str, max_length: int | None = None) -> tuple[dict, bool]:
    """(encode_qa's item, whether its answer was cut to fit `max_length`)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no eos_token_id; "
                        "set tokenizer.eos_token (the end-of-turn token) before encoding")
    if not answer.strip():
        raise DataError(f"answer to question {question!r} is empty")
    chat = has_chat_template(tokenizer)
    p = _prompt_ids(tokenizer, question, chat)
    a = _ids(tokenizer, answer if chat else " " + answer, special=False)
    if not a:
        raise DataError(f"answer to question {question!r} is empty after tokenization")
    if max_length and len(p) + 1 > max_length:  # at least one answer token must fit
        raise DataError(f"question {question!r} alone takes {len(p)} tokens; max_length={max_length} "
                        "leaves no room for its answer (raise max_length or shorten the question)")
    item = {"input_ids": p + a + [eos], "labels": [IGNORE] * len(p) + a + [eos], "n_prompt": len(p),
            "n_answer": len(a)}
    fit = truncate(item, max_length)
    return fit, fit is not item


def truncate(item: dict, max_length: int | None) -> dict:
    """An encoded item (encode_qa) cut to `max_length` tokens the way encode_qa cuts: the whole prompt
    is kept, the answer is cut, and a cut answer loses its eos. Returned as is when it fits (or when
    max_length is 0/None); `item is not truncate(item, n)` tells that it was cut."""
    n_p = item["n_prompt"]
    if not max_length or len(item["input_ids"]) <= max_length:
        return item
    if n_p + 1 > max_length:
        raise DataError(f"the prompt alone takes {n_p} tokens; max_length={max_length} leaves no room "
                        "for its answer (raise max_length or shorten the question)")
    ids = item["input_ids"][:max_length]
    return {"input_ids": ids, "labels": item["labels"][:max_length], "n_prompt": n_p, "n_answer": max_length - n_p}


def context_length(model, max_length: int | None = None) -> int | None:
    """The longest sequence to give `model`: the smaller of `max_length` and the model's
    `max_position_embeddings` (`n_positions` for GPT-2-style configs), ignoring unset/0 values;
    None when neither is known."""
    cfg = getattr(model, "config", None)
    ctx = next((getattr(cfg, k) for k in ("max_position_embeddings", "n_positions")
                if isinstance(getattr(cfg, k, None), int)), None)
    limits = [n for n in (max_length, ctx) if n]
    return min(limits) if limits else None


def encode_rows(tokenizer, rows: list[dict], max_length: int | None = None, answer_key: str = "answer") -> list[dict]:
    """encode_qa over TOFU rows, answering with `row[answer_key]` (e.g. 'paraphrased_answer')."""
    return [encode_qa(tokenizer, r["question"], r[answer_key], max_length) for r in rows]


def pad_id(tokenizer) -> int:
    """The id used for right padding: pad, else eos. Padding never hides tokens (collate builds the
    attention mask from lengths), so pad == eos is safe."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def collate(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad encoded items. attention_mask comes from lengths: with pad_id == eos an eos inside a
    sequence must stay visible. metric_mask marks answer tokens without eos (position t holds token t;
    its predicting logit is at t-1)."""
    if not items:
        raise ValueError("collate got an empty batch")
    T = max(len(it["input_ids"]) for it in items)
    B = len(items)
    input_ids = torch.full((B, T), int(pad_id), dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    metric = torch.zeros((B, T), dtype=torch.bool)
    for b, it in enumerate(items):
        n = len(it["input_ids"])
        input_ids[b, :n] = torch.tensor(it["input_ids"], dtype=torch.long)
        labels[b, :n] = torch.tensor(it["labels"], dtype=torch.long)
        attn[b, :n] = 1
        metric[b, it["n_prompt"]: it["n_prompt"] + it["n_answer"]] = True
    return {"input_ids": input_ids, "attention_mask": attn, "labels": labels, "metric_mask": metric}


def length_batches(lengths: list[int], batch_size: int, shuffle: bool, seed: int = 0) -> list[list[int]]:
    """Index batches grouped by length, so padding is small.

    Eval (shuffle=False): indices sorted by length, chunked. Train: a seeded permutation is cut into
    pools of 50 batches, each pool sorted by length and chunked, then the batch order is shuffled, so
    batches stay random across epochs/seeds but similar in length. Every index appears exactly once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    idx = list(range(len(lengths)))
    if not shuffle:
        idx.sort(key=lambda i: lengths[i])
        return [idx[i: i + batch_size] for i in range(0, len(idx), batch_size)]
    rng = random.Random(seed)
    rng.shuffle(idx)
    pool = batch_size * 50
    batches = []
    for s in range(0, len(idx), pool):
        chunk = sorted(idx[s: s + pool], key=lambda i: lengths[i])
        batches += [chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches
