"""Unlearning objectives (docs/objectives.md): one small function per method, and ONE registry saying what each needs.

Every objective returns PER-EXAMPLE losses `[B]` (and per-example logs). The loop sums them and divides
by the GLOBAL batch size, so the result does not depend on how a global batch is split into micro
batches, accumulation steps or processes. Per-example NLL is the mean over that example's trained
tokens (answer + eos, docs/data.md#prompt-and-answer-formatting); `logpi` is their SUM.

`L_i = gamma * L_forget_i + alpha * L_retain_i`, with forget example i paired with retain example i.
The reference policy is the start model: its sequence log-probs on the fixed forget / idk answers are
computed once before training (`sequence_logps`) and handed over in `ctx.ref_logp`; RMU's reference
hidden states come from `ctx.reference()` (the delta disabled; a frozen copy in unmasked mode).

A new objective is one function `(model, batch, ctx) -> (loss [B], logs)` plus one `register(...)` call
declaring its hyperparameters (defaults and docs) and what the loop must prepare for it (registry.Objective);
the loop reads only those declarations, never method names. The same call works from a plug-in file outside
the package (loc_unlearn.plugins.register_objective = registry.register_objective, of which `register` is
another name).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.value_vectors import _layers
from ..registry import ANSWER_SETS, OBJECTIVES, Objective, register_objective, resolve_params  # noqa: F401

register = register_objective
"""register(name, fn, params, **needs): add an unlearning method (see registry.register_objective)."""


def known_hparams() -> set[str]:
    """Every hyperparameter name some registered objective reads."""
    return {k for o in OBJECTIVES.values() for k in o.defaults}


def hparams_from(section) -> dict:
    """The hyperparameters set in a config section (an UnlearnConfig, after method_config for one method):
    its `params`. The rest keeps each method's default (resolve_hparams)."""
    return dict(section.params)


def resolve_hparams(method: str, hparams: dict | None, n_layers: int) -> dict:
    """The method's defaults overridden by the non-None entries of `hparams`, each as its default's type
    (int for layer indices, float otherwise), then the method's `resolve` (values that depend on the model).
    Keys the method does not use are ignored (one config serves every method); unknown keys are an error."""
    obj = OBJECTIVES.get(method)  # unknown method -> error listing the known ones
    known = known_hparams()
    for k in hparams or {}:
        if k not in known:
            raise ConfigError(f"unknown unlearning hyperparameter {k!r}; known: {', '.join(sorted(known))}")
    hp = resolve_params(obj, hparams, "unlearn")
    return obj.resolve(hp, n_layers) if obj.resolve else hp


@dataclass
class Context:
    """What an objective needs besides the model and the batch."""
    hp: dict
    ref_logp: dict[str, torch.Tensor] = field(default_factory=dict)  # cached start-model logpi for this batch
    reference: Callable | None = None  # () -> context manager yielding the start model (RMU)
    rmu_target: torch.Tensor | None = None  # c * u / |u|, fixed for the run


# ----------------------------------------------------------------------------- shared pieces


def token_logps(model, b: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(token t | tokens < t) at trained label positions: `([B, T-1] float32, [B, T-1] bool)`."""
    labels = b["labels"][:, 1:]
    valid = labels != -100
    # Logits only from the first trained position of the batch on: the vocabulary head over prompt tokens
    # (a whole chat template) is most of a forward for small models with large vocabularies, and unused.
    # Positions before `first` have no trained label, so dropping them changes no loss value.
    T1 = labels.shape[1]
    first = int(valid.any(0).float().argmax()) if bool(valid.any()) else T1 - 1
    keep = T1 - first + 1  # logits at positions first..T-1 (the last one is dropped below)
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], logits_to_keep=keep).logits[:, :-1]
    labels, valid = labels[:, first:], valid[:, first:]
    # cross_entropy = -log_softmax gathered, computed in float32 without materializing all log-probs twice.
    lp = -F.cross_entropy(logits.float().flatten(0, 1), labels.clamp_min(0).flatten(), reduction="none")
    return lp.view(labels.shape) * valid, valid


def seq_logp(model, b: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(logpi = SUM of trained-token log-probs [B], number of trained tokens [B])."""
    lp, valid = token_logps(model, b)
    return lp.sum(-1), valid.sum(-1)


def nll_avg(model, b: dict) -> torch.Tensor:
    lp, n = seq_logp(model, b)
    return -lp / n.clamp_min(1)


@torch.no_grad()
def sequence_logps(model, batches) -> torch.Tensor:
    """logpi of the start model for each collated batch in `batches`, concatenated. Run ONCE before
    training to build the NPO/DPO reference cache (no second model copy, no per-step recompute)."""
    return torch.cat([seq_logp(model, b)[0].float().cpu() for b in batches])


def _combine(model, batch, ctx, lf: torch.Tensor, logs: dict, retain_fn=None):
    """L_i = gamma lf_i + alpha lr_i; the retain pass is skipped when alpha == 0."""
    g, a = ctx.hp["gamma"], ctx.hp["alpha"]
    loss = g * lf
    logs = {"forget_loss": lf.detach(), **logs}
    if a != 0:
        lr = (retain_fn or (lambda: nll_avg(model, batch["retain"])))()
        loss = loss + a * lr
        logs["retain_loss"] = lr.detach()
    return loss, logs


# ----------------------------------------------------------------------------- objectives


def ascent(model, batch, ctx):
    """Gradient ascent on the forget NLL (ga; graddiff = the same with a retain NLL term)."""
    return _combine(model, batch, ctx, -nll_avg(model, batch["forget"]), {})


def wga(model, batch, ctx):
    lp, valid = token_logps(model, batch["forget"])
    w = torch.exp(ctx.hp["beta"] * lp).detach()  # p_t^beta, a weight, not differentiated
    lf = (w * lp * valid).sum(-1) / valid.sum(-1).clamp_min(1)
    return _combine(model, batch, ctx, lf, {})


def npo(model, batch, ctx):
    beta = ctx.hp["beta"]
    lp, _ = seq_logp(model, batch["forget"])
    ratio = lp - ctx.ref_logp["forget"]
    lf = -(2 / beta) * F.logsigmoid(-beta * ratio)
    return _combine(model, batch, ctx, lf, {"log_ratio": ratio.detach()})


def simnpo(model, batch, ctx):
    beta, delta = ctx.hp["beta"], ctx.hp["delta"]
    lf = -(2 / beta) * F.logsigmoid(beta * (nll_avg(model, batch["forget"]) - delta))
    return _combine(model, batch, ctx, lf, {})


def dpo(model, batch, ctx):
    beta = ctx.hp["beta"]
    lp_f, _ = seq_logp(model, batch["forget"])
    lp_i, _ = seq_logp(model, batch["idk"])
    margin = (lp_i - ctx.ref_logp["idk"]) - (lp_f - ctx.ref_logp["forget"])
    lf = -(2 / beta) * F.logsigmoid(beta * margin)
    return _combine(model, batch, ctx, lf, {"margin": margin.detach()})


def learn(model, batch, ctx):
    """Plain NLL descent on the training rows (learn; learn_reg = with a retain NLL term)."""
    return _combine(model, batch, ctx, nll_avg(model, batch["forget"]), {})


class _Stop(Exception):
    pass


def layer_output(model, b: dict, layer: int) -> torch.Tensor:
    """Residual stream h^l = output of decoder layer `layer` [B, T, d]. The forward stops right after that
    layer (the rest of the network and the vocabulary projection are never computed)."""
    got = {}

    def hook(_m, _args, out):
        got["h"] = out[0] if isinstance(out, tuple) else out
        raise _Stop

    h = _layers(model)[layer].register_forward_hook(hook)
    try:
        model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    except _Stop:
        pass
    finally:
        h.remove()
    return got["h"]


def _token_mse(x: torch.Tensor, target: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per example: mean over its trained positions (labels != -100: answer tokens + eos, the positions every
    other objective's loss covers; docs/data.md#prompt-and-answer-formatting) of the mean over d of (x - target)^2. Prompt and padding
    positions do not count."""
    se = (x.float() - target.float()).pow(2).mean(-1)
    m = (labels != -100).to(se.dtype)
    return (se * m).sum(-1) / m.sum(-1).clamp_min(1)


def rmu(model, batch, ctx):
    l = ctx.hp["rmu_layer"]
    f = batch["forget"]
    lf = _token_mse(layer_output(model, f, l), ctx.rmu_target.expand(1, 1, -1), f["labels"])

    def retain():
        r = batch["retain"]
        with torch.no_grad(), ctx.reference() as ref:
            h_ref = layer_output(ref, r, l)
        return _token_mse(layer_output(model, r, l), h_ref, r["labels"])

    return _combine(model, batch, ctx, lf, {}, retain_fn=retain)


def rmu_target(d: int, c: float, seed: int) -> torch.Tensor:
    """c * u / |u| with u ~ U[0, 1)^d, seeded (fixed for the whole run)."""
    u = torch.rand(d, generator=torch.Generator().manual_seed(seed))
    return c * u / u.norm()


# ----------------------------------------------------------------------------- the registry


def _rmu_layer(hp: dict, n_layers: int) -> dict:
    # docs/objectives.md#rmu: layer 7 of a 32-layer model, scaled to depth; -1 = that default.
    l = hp["rmu_layer"] if hp["rmu_layer"] >= 0 else round(7 / 32 * n_layers)
    if hp["rmu_layer"] >= n_layers:
        raise ConfigError(f"unlearn.rmu_layer={hp['rmu_layer']} but the model has {n_layers} layers "
                          f"(0..{n_layers - 1})")
    return hp | {"rmu_layer": min(max(l, 0), n_layers - 1)}


def _hp(gamma: float, alpha: float, **extra) -> dict:
    """Every objective's loss is gamma * forget term + alpha * retain term (_combine)."""
    return {"gamma": (gamma, "weight of the forget loss"),
            "alpha": (alpha, "weight of the retain loss (0 = no retain pass)"), **extra}


# Defaults (docs/objectives.md#defaults). gamma/alpha not fixed by a method's paper follow open-unlearning (forget weight 1, retain NLL
# weight 1). learn_reg's alpha is the injection lambda.
_BETA = "beta of WGA (weight exponent), NPO / SimNPO / DPO (inverse temperature)"
register("ga", ascent, _hp(1.0, 0.0), doc="gradient ascent on the forget NLL")
register("graddiff", ascent, _hp(1.0, 1.0), doc="gradient ascent with a retain NLL term")
register("wga", wga, _hp(1.0, 1.0, beta=(1.0, _BETA)), doc="weighted gradient ascent")
register("npo", npo, _hp(1.0, 1.0, beta=(0.1, _BETA)), ref_logp=("forget",), doc="negative preference optimization")
register("simnpo", simnpo, _hp(0.125, 1.0, beta=(4.5, _BETA), delta=(0.0, "SimNPO margin")), doc="reference-free NPO")
register("dpo", dpo, _hp(1.0, 1.0, beta=(0.1, _BETA)), ref_logp=("forget", "idk"), needs_idk=True,
         doc="DPO towards IDK refusals")
# rmu revision 1: MSE over answer positions only (was every real token)
register("rmu", rmu, _hp(1.0, 100.0, rmu_c=(6.5, "RMU steering coefficient c"),
                         rmu_layer=(-1, "RMU steering layer; -1 = 7 scaled to the model's depth (round(7/32 * L))")),
         needs_reference=True, partial_forward=True, always_retain=True, resolve=_rmu_layer,
         target=lambda d, hp, seed: rmu_target(d, hp["rmu_c"], seed), revision=1, doc="representation misdirection")
register("learn", learn, _hp(1.0, 0.0), doc="NLL descent (injection)")
register("learn_reg", learn, _hp(1.0, 1.0), doc="NLL descent with a retain NLL term (injection; alpha = lambda)")

# Derived views kept for existing imports (resolve_hparams reads the registry itself).
DEFAULTS: dict[str, dict] = {n: dict(o.defaults) for n, o in OBJECTIVES.items()}
KNOWN_HPARAMS = known_hparams()
