"""Value vectors: the columns of each layer's MLP down-projection (docs/localizers.md#value-vectors).

`MLP_l(h) = W_down^l a^l(h)`; value vector `v_{l,i} = W_down^l[:, i]`, a mask is `[L, d_ff]`.
Architectures only differ in where the down-projection lives and how its weight is laid out, so one
small table maps each `config.model_type` to (layer-list attribute, down-proj path, transposed).
Everything else (localization, masked training, output fit) goes through the functions here.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable

import torch
from torch import nn

from ..errors import UserError

# model_type -> (attribute of the base model holding the decoder layers, down-proj path in a layer,
# transposed). "transposed" = the stored weight is [d_ff, d] (GPT-2 Conv1D computes x @ W + b).
ADAPTERS: dict[str, tuple[str, str, bool]] = {
    "llama": ("layers", "mlp.down_proj", False),
    "mistral": ("layers", "mlp.down_proj", False),
    "qwen2": ("layers", "mlp.down_proj", False),
    "qwen3": ("layers", "mlp.down_proj", False),
    "olmo": ("layers", "mlp.down_proj", False),
    "olmo2": ("layers", "mlp.down_proj", False),
    "olmo3": ("layers", "mlp.down_proj", False),
    "gemma": ("layers", "mlp.down_proj", False),
    "gemma2": ("layers", "mlp.down_proj", False),
    "gemma3_text": ("layers", "mlp.down_proj", False),
    "gemma3": ("layers", "mlp.down_proj", False),  # multimodal wrapper: its language model's layers
    "phi3": ("layers", "mlp.down_proj", False),
    "gpt2": ("h", "mlp.c_proj", True),
    "gpt_neox": ("layers", "mlp.dense_4h_to_h", False),
}


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP / accelerate wrappers keep the real model in .module
    while not hasattr(model, "config") and hasattr(model, "module"):
        model = model.module
    return model


def _adapter(model: nn.Module) -> tuple[str, str, bool]:
    cfg = getattr(_unwrap(model), "config", None)
    mtype = getattr(cfg, "model_type", None)
    if mtype not in ADAPTERS:
        raise UserError(f"unsupported model architecture {mtype!r} ({type(model).__name__}): no value-vector "
                        f"adapter; supported model_types: {', '.join(sorted(ADAPTERS))} "
                        f"(add one line to ADAPTERS in loc_unlearn/models/value_vectors.py)")
    return ADAPTERS[mtype]


def _layers(model: nn.Module) -> nn.ModuleList:
    model = _unwrap(model)
    layers_attr, _, _ = _adapter(model)
    base = getattr(model, "base_model", model)
    # Gemma3ForConditionalGeneration (and similar): decoder layers sit in the language model.
    if not hasattr(base, layers_attr) and hasattr(base, "language_model"):
        base = base.language_model
    layers = getattr(base, layers_attr, None)
    if layers is None:
        raise UserError(f"model {type(model).__name__} ({model.config.model_type}) has no decoder layers at "
                        f"base_model.{layers_attr}; is it a causal LM of that architecture?")
    return layers


def down_projs(model: nn.Module) -> list[nn.Module]:
    """The down-projection module of every layer, in layer order."""
    _, path, _ = _adapter(model)
    return [layer.get_submodule(path) for layer in _layers(model)]


def down_proj_slots(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent module, attribute name, down-projection module) of every layer: where a wrapper
    (train/masked.MaskedDownProj) is registered in place of the down-projection."""
    _, path, _ = _adapter(model)
    out = []
    for layer in _layers(model):
        parent_path, _, attr = path.rpartition(".")
        parent = layer.get_submodule(parent_path) if parent_path else layer
        out.append((parent, attr, getattr(parent, attr)))
    return out


def down_proj_weight_param(model: nn.Module, layer: int) -> tuple[nn.Parameter, bool]:
    """(the down-proj weight Parameter of `layer`, transposed). transposed=True means it is stored
    `[d_ff, d]` (GPT-2), so value vector i is row i; otherwise `[d, d_ff]` and it is column i.
    For code that must replace, parametrize or optimize the weight itself."""
    _, _, transposed = _adapter(model)
    return down_projs(model)[layer].weight, transposed


def value_matrix(model: nn.Module, layer: int) -> torch.Tensor:
    """W_down of `layer` as a `[d, d_ff]` view (edits write through to the model's weight)."""
    w, transposed = down_proj_weight_param(model, layer)
    return w.T if transposed else w


def shape(model: nn.Module) -> tuple[int, int]:
    """(L, d_ff): the shape of a value-vector mask for this model."""
    return len(_layers(model)), value_matrix(model, 0).shape[1]


def fingerprint(model: nn.Module) -> dict:
    """What a mask must match to be applied to a model (mask metadata, docs/localizers.md#mask-files)."""
    L, d_ff = shape(model)
    return {"architecture": _unwrap(model).config.model_type, "n_layers": L, "d_ff": d_ff,
            "hidden": value_matrix(model, 0).shape[0]}


@contextmanager
def capture_down_inputs(model: nn.Module, layers: Iterable[int] | None = None, detach: bool = True):
    """Record the down-proj inputs a^l (`[B, T, d_ff]`) of every forward pass run inside the block.

    Yields `{layer: [tensor per forward call]}`. `detach=False` keeps the autograd graph (e.g. for
    losses on activations); the default detaches so captured tensors do not pin the graph.
    `layers` restricts capture (memory: one [B, T, d_ff] tensor per layer and call).
    """
    mods = down_projs(model)
    which = range(len(mods)) if layers is None else list(layers)
    store: dict[int, list[torch.Tensor]] = {l: [] for l in which}

    def make_hook(l):
        def hook(_module, args):
            a = args[0]
            store[l].append(a.detach() if detach else a)
        return hook

    handles = [mods[l].register_forward_pre_hook(make_hook(l)) for l in which]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()
