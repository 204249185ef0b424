"""Random baselines (SPEC §6): `random` = a uniform k-subset; `random_complement` = a uniform k-subset
of the complement of `cfg.source_mask` (the paper's Random region next to an Oracle, SPEC §7);
`random_layer_matched` (extra) = uniform within each layer with the per-layer counts of `cfg.source_mask`,
the control that separates "which layers" from "which vectors" for an attribution method's mask.

Both are i.i.d. uniform scores plus top-k: the top k of exchangeable scores is a uniform k-subset
(per layer when scope=per_layer), and a seeded CPU generator makes it the same on every machine.
"""
import torch

from ...models.value_vectors import shape
from ..mask import Mask
from .registry import LOCALIZERS


def _uniform(cfg, model) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(cfg.seed))
    return torch.rand(shape(model), generator=g, dtype=torch.float64)


@LOCALIZERS.register("random")
def random_scores(cfg, model, tokenizer, forget_rows, retain_rows):
    return _uniform(cfg, model)


@LOCALIZERS.register("random_complement")
def random_complement_scores(cfg, model, tokenizer, forget_rows, retain_rows):
    s = _uniform(cfg, model)
    src = Mask.load(cfg.source_mask, expect_shape=tuple(s.shape))
    s[src.mask] = float("-inf")  # never pick a source vector; localize() sizes the pick like the source
    return s


@LOCALIZERS.register("random_layer_matched")
def random_layer_matched_scores(cfg, model, tokenizer, forget_rows, retain_rows):
    return _uniform(cfg, model)  # localize() picks the source mask's count in every layer
