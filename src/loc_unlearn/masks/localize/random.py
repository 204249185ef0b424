"""Random baselines (docs/localizers.md#random): `random` = a uniform k-subset; `random_complement` = a uniform k-subset
of the complement of `cfg.source_mask` (the paper's Random region next to an Oracle, docs/studies.md#step-3-oracle-and-random);
`random_layer_matched` (extra) = uniform within each layer with the per-layer counts of `cfg.source_mask`,
the control that separates "which layers" from "which vectors" for an attribution method's mask.

All are i.i.d. uniform scores plus top-k: the top k of exchangeable scores is a uniform k-subset
(per layer when scope=per_layer), and a seeded CPU generator makes it the same on every machine.
"""
import torch

from ...models.value_vectors import shape
from ...registry import register_localizer


def random_scores(lcfg, model, tokenizer, forget_rows, retain_rows):
    g = torch.Generator().manual_seed(int(lcfg.seed))
    return torch.rand(shape(model), generator=g, dtype=torch.float64)


# One score function; what differs is declared: the source mask's vectors excluded and its size copied
# (random_complement), or its per-layer counts copied (random_layer_matched). localize() does both.
register_localizer("random", random_scores, doc="a uniform k-subset")
register_localizer("random_complement", random_scores, needs_source_mask=True, size_from_source="count",
                   excludes_source=True, doc="a uniform subset of the source mask's complement, of its size")
register_localizer("random_layer_matched", random_scores, needs_source_mask=True, size_from_source="per_layer",
                   doc="uniform within each layer, with the source mask's per-layer counts")
