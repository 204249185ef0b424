"""WAGLE localization (docs/localizers.md#wagle): s_j = |(theta_j - g_retain_j / gamma) * g_forget_j| per weight of
W_down, summed over each column (value vector). g = gradient of the mean answer-token NLL."""
import torch

from ...models.value_vectors import shape, value_matrix
from ...registry import localizer
from .gradient import down_grads, encode_rows, pad_id


def wagle_from_grads(thetas, g_forget, g_retain, gamma: float) -> torch.Tensor:
    """[L, d_ff] from per-layer [d, d_ff] weights and gradients (float32)."""
    return torch.stack([((t.float() - gr / gamma) * gf).abs().sum(0)
                        for t, gf, gr in zip(thetas, g_forget, g_retain)])


@localizer("wagle", params={"wagle_gamma": (1e-6, "WAGLE: gamma of s = |(theta - g_retain / gamma) * g_forget|")},
           doc="weight attribution of the forget gradient against the retain gradient")
def wagle_scores(lcfg, model, tokenizer, forget_rows, retain_rows):
    pad = pad_id(tokenizer)
    gf = down_grads(model, encode_rows(tokenizer, forget_rows, lcfg.max_length), lcfg.batch_size, pad, "wagle: forget")
    gr = down_grads(model, encode_rows(tokenizer, retain_rows, lcfg.max_length), lcfg.batch_size, pad, "wagle: retain")
    L, _ = shape(model)
    thetas = [value_matrix(model, l).detach() for l in range(L)]
    return wagle_from_grads(thetas, gf, gr, lcfg.params["wagle_gamma"]).cpu()
