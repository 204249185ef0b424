"""Activation localization (docs/localizers.md#activation): S_{l,i} = |mean_t a^l_i(t)| * ||v_{l,i}||_2.

The mean runs over all answer-predicting positions of the forget set, pooled over examples (each
token counts once): positions t whose next token t+1 is an answer token (metric_mask, eos excluded).
"""
import torch

from ...data.formatting import pad_id
from ...models.value_vectors import capture_down_inputs, shape, value_matrix
from ...utils import eval_mode, progress
from ...registry import localizer
from .gradient import batches, device_of, encode_rows


def mean_answer_activations(model, tokenizer, rows, batch_size: int, max_length: int) -> torch.Tensor:
    """[L, d_ff] float64: mean down-proj input over answer-predicting positions of `rows`."""
    L, d_ff = shape(model)
    total = torch.zeros(L, d_ff, dtype=torch.float64)
    n = 0
    items = encode_rows(tokenizer, rows, max_length)
    with eval_mode(model), torch.no_grad(), capture_down_inputs(model) as acts:
        bs = list(batches(items, batch_size, pad_id(tokenizer), device_of(model)))
        for b in progress(bs, desc="activation: forget", leave=False):
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            pos = b["metric_mask"][:, 1:]  # logit/activation at t predicts token t+1
            for l in range(L):
                a = acts[l].pop()[:, :-1]
                total[l] += a[pos].double().sum(0).cpu()
            n += int(pos.sum())
    if n == 0:
        raise ValueError("activation localization: the forget rows have no answer tokens")
    return total / n


@localizer("activation", doc="|mean answer activation| x value-vector norm")
def activation_scores(lcfg, model, tokenizer, forget_rows, retain_rows):
    mean_a = mean_answer_activations(model, tokenizer, forget_rows, lcfg.batch_size, lcfg.max_length)
    L, _ = shape(model)
    norms = torch.stack([value_matrix(model, l).detach().double().norm(dim=0).cpu() for l in range(L)])
    return mean_a.abs() * norms
