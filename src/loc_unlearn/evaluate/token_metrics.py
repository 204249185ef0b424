"""Teacher-forced token metrics from shared forward passes (docs/metrics.md).

For an eval set, every answer variant (answer, paraphrased_answer, all perturbed answers) is
encoded once and run through the model in length-bucketed batches: ONE pass per (example,
variant). From each pass we take, at answer positions only, the argmax (ES, EM) and the
cross-entropy (NLL_avg). Nothing is generated and no full-vocabulary log-softmax is formed
over prompt or padding positions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.formatting import collate, context_length, encode_fit, length_batches, pad_id
from ..errors import DataError, UserError
from ..utils import eval_mode, progress



def answer_stats(logits, labels, metric_mask, es_floor: str = "none") -> dict:
    """Per-row ES, EM, summed NLL and answer length from one teacher-forced pass (docs/metrics.md#extraction-strength-es).

    `logits` [B, K, V] are the logits of the LAST K positions of the sequence (K = T for a full
    forward; smaller when the model was asked for `logits_to_keep`); `labels`/`metric_mask` [B, T]
    hold token t at position t, so token t is predicted by the logit at t-1.
    """
    B, T = labels.shape
    K = logits.shape[1]
    # Align: logit at position T-K+j predicts the token at T-K+j+1.
    tgt = labels[:, T - K + 1:]
    m = metric_mask[:, T - K + 1:].bool()
    if int(metric_mask[:, : T - K + 1].sum()) != 0:
        raise ValueError("answer_stats: metric positions fall outside the kept logits")
    n = m.sum(1)
    rows = m.nonzero(as_tuple=True)[0]
    sel = logits[:, :-1][m]  # [N, V]: only answer-predicting positions are touched
    y = tgt[m]
    wrong = sel.argmax(-1) != y
    # 1-based index of each answer token inside its answer: k* = index of the last wrong one.
    pos = m.long().cumsum(1)[m]
    kstar = torch.zeros(B, dtype=torch.long, device=labels.device)
    kstar.scatter_reduce_(0, rows, torch.where(wrong, pos, 0), reduce="amax")
    nf = n.clamp_min(1).double()
    es = 1.0 - kstar.double() / nf
    if es_floor == "ou":
        # open-unlearning scans k < T only, so a wrong last token gives 1/T instead of 0.
        es = torch.maximum(es, 1.0 / nf)
    elif es_floor != "none":
        raise UserError(f"unknown es_floor {es_floor!r}; expected 'none' or 'ou' (config key eval.es_floor)")
    n_wrong = torch.zeros(B, dtype=torch.long, device=labels.device).index_add_(0, rows, wrong.long())
    em = 1.0 - n_wrong.double() / nf
    ce = F.cross_entropy(sel.float(), y, reduction="none")
    nll_sum = torch.zeros(B, dtype=torch.float64, device=labels.device).index_add_(0, rows, ce.double())
    return {"es": es, "em": em, "nll_sum": nll_sum, "n": n}


def es_from_logits(logits, labels, metric_mask, es_floor: str = "none"):
    """One-pass Extraction Strength per row (docs/metrics.md#extraction-strength-es): ES = 1 - k*/T, k* = 1 + last wrong position."""
    return answer_stats(logits, labels, metric_mask, es_floor)["es"]


def _device(model):
    return next(model.parameters()).device


@torch.inference_mode()
def _run(model, items, pad, batch_size, es_floor, desc):
    """Metrics for a list of encoded items, in length-bucketed batches; results in input order."""
    out = [None] * len(items)
    dev = _device(model)
    batches = length_batches([len(it["input_ids"]) for it in items], batch_size, shuffle=False, seed=0)
    for idx in progress(batches, desc=desc, leave=False):
        b = collate([items[i] for i in idx], pad)
        T = b["input_ids"].shape[1]
        # Logits are only needed from the first answer-predicting position on: saves the
        # lm_head matmul (and the [B,T,V] buffer) over prompt positions.
        first = min(items[i]["n_prompt"] for i in idx)
        keep = T - first + 1
        res = model(input_ids=b["input_ids"].to(dev), attention_mask=b["attention_mask"].to(dev),
                    logits_to_keep=keep, use_cache=False)
        st = answer_stats(res.logits, b["labels"].to(dev), b["metric_mask"].to(dev), es_floor)
        es, em, nll, n = (st[k].tolist() for k in ("es", "em", "nll_sum", "n"))  # one sync per batch
        for j, i in enumerate(idx):
            out[i] = {"es": es[j], "em": em[j], "nll": nll[j] / n[j], "n": n[j]}
    return out


def _encode(tokenizer, question, answer, where, limit=None, cut=None, row=None):
    """Encoded (question, answer), cut to `limit` tokens (the model's context): metrics see the whole
    answer when it fits. A cut adds `row` to the set `cut`, so the metrics can say how many were cut."""
    try:
        it, was_cut = encode_fit(tokenizer, question, answer, limit)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    if it["n_answer"] < 1:
        raise DataError(f"{where}: the answer {answer!r} encodes to no tokens; metrics need at least one")
    if was_cut and cut is not None:
        cut.add(row)
    return it


def token_metrics(model, tokenizer, rows, batch_size: int = 16, es_floor: str = "none",
                  max_length: int | None = None, answer_only: bool = False) -> dict:
    """Per-example lists for an eval set (docs/metrics.md).

    Returns `es, em, nll, n_answer` for the answer and, where the rows carry them,
    `nll_paraphrased` and `nll_perturbed` (a list per example; skipped with `answer_only`, which is all
    ES needs: eval.full_at=ends between a trajectory's end points). One batched pass per variant;
    all perturbed answers of the set share one stream of batches. Sequences longer than
    `context_length(model, max_length)` (the model's max_position_embeddings, or `max_length` if
    smaller) are cut there like training cuts them (answer cut, no eos); `truncated` counts the rows
    with any variant cut and `max_length` holds the limit used.
    """
    if not rows:
        raise DataError("token_metrics: empty eval set")
    limit, cut = context_length(model, max_length), set()
    pad = pad_id(tokenizer)
    with eval_mode(model):
        ans = [_encode(tokenizer, r["question"], r["answer"], f"row {i + 1} field 'answer'", limit, cut, i)
               for i, r in enumerate(rows)]
        a = _run(model, ans, pad, batch_size, es_floor, "eval answer")
        out = {"es": [x["es"] for x in a], "em": [x["em"] for x in a], "nll": [x["nll"] for x in a],
               "n_answer": [x["n"] for x in a]}
        if not answer_only and all("paraphrased_answer" in r for r in rows):
            par = [_encode(tokenizer, r["question"], r["paraphrased_answer"], f"row {i + 1} field 'paraphrased_answer'",
                           limit, cut, i)
                   for i, r in enumerate(rows)]
            out["nll_paraphrased"] = [x["nll"] for x in _run(model, par, pad, batch_size, es_floor, "eval paraphrased")]
        if not answer_only and all(r.get("perturbed_answer") for r in rows):
            owner, pert = [], []
            for i, r in enumerate(rows):
                p = r["perturbed_answer"]
                if isinstance(p, str):  # tolerate a single string instead of a list
                    p = [p]
                for j, s in enumerate(p):
                    owner.append(i)
                    pert.append(_encode(tokenizer, r["question"], s, f"row {i + 1} field 'perturbed_answer[{j}]'",
                                        limit, cut, i))
            res = _run(model, pert, pad, batch_size, es_floor, "eval perturbed")
            per = [[] for _ in rows]
            for i, x in zip(owner, res):
                per[i].append(x["nll"])
            out["nll_perturbed"] = per
        out["truncated"], out["max_length"] = len(cut), limit
    return out
