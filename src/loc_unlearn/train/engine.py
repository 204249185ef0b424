"""The distributed engine under the training loop: accelerate's Accelerator with whatever the launch chose
(nothing, DDP, FSDP2 or DeepSpeed ZeRO-3), and the few places where the loop must know which.

The loop itself only calls `accelerator.prepare`, `accelerator.backward` and `accelerator.clip_grad_norm_`;
what is here is what accelerate leaves to the caller:

* `make_accelerator`: one Accelerator per training (the state is a process-wide singleton; stages run
  several trainings with different precisions). The device comes from the project's one device rule
  (utils.resolve_device). On a machine without a GPU accelerate turns every multi-process launch into
  MULTI_CPU (DDP over gloo) and ignores an FSDP config; `_cpu_fsdp` keeps the FSDP2 plugin so that the
  CPU simulation of the tests runs accelerate's real FSDP2 path (torch's fully_shard over a gloo mesh).
* `full_state_dict`: the gathered model state on EVERY process (the final model is evaluated by every
  process of a collective stage), through the engine's own gathering API.
* `plain_model`: a sharded engine rebuilds the model in place into DTensors / partitions that cannot be
  handed back to callers; the final model is rebuilt from the gathered state as a plain module.
"""
from __future__ import annotations

import os

import torch
from torch import nn

ENGINES = ("none", "ddp", "fsdp2", "deepspeed")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def make_accelerator(mixed_precision: str, device: str = "auto"):
    """An Accelerator for one training run on the device the `device` setting resolves to."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    from ..utils import resolve_device

    dev = resolve_device(device)
    cpu = dev.type == "cpu"
    # RMU's loss ends at its steering layer, so the deltas of later layers get no gradient: DDP must
    # expect unused parameters (one extra graph walk per step; FSDP2 and ZeRO-3 need nothing).
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    if cpu and _env_true("ACCELERATE_USE_DEEPSPEED"):
        # DeepSpeed on CPUs (its CPU accelerator, gloo): accelerate's cpu flag would silently replace
        # DeepSpeed by DDP, and without an explicit backend it miscounts the processes (each says 1).
        cpu = False
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    st = AcceleratorState._shared_state
    if st and (st.get("_mixed_precision", mixed_precision) != mixed_precision
               or (st.get("_cpu") is not None and st.get("_cpu") != cpu)):
        AcceleratorState._reset_state()
    acc = Accelerator(mixed_precision=mixed_precision, cpu=cpu, kwargs_handlers=handlers)
    _cpu_fsdp(acc)
    return acc


def configure_deepspeed(acc, micro: int, n_micro: int, grad_clip: float) -> None:
    """Tell ZeRO-3 the loop's step structure before `prepare`: DeepSpeed steps its optimizer inside the
    backward that completes `gradient_accumulation_steps` micro batches and clips by its own config, so
    both must be the loop's (n_micro micro batches of `micro` rows per process, train.grad_clip). The
    client optimizer is the loop's torch AdamW (DeepSpeed runs it on its fp32 partitions)."""
    ds = acc.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = micro
    ds["gradient_accumulation_steps"] = n_micro
    ds["train_batch_size"] = micro * n_micro * acc.num_processes
    ds["gradient_clipping"] = grad_clip if grad_clip > 0 else 0.0
    ds["zero_allow_untested_optimizer"] = True
    ds["zero_force_ds_cpu_optimizer"] = False
    acc.gradient_accumulation_steps = n_micro


def _cpu_fsdp(acc) -> None:
    """CPU simulation of FSDP2: accelerate (1.x) only enables FSDP for accelerator devices and silently runs
    DDP on CPUs. When the launch asked for FSDP (ACCELERATE_USE_FSDP, set by `accelerate launch` from an
    FSDP config) and got MULTI_CPU, switch the state to FSDP with the plugin built from the same launch
    environment, so `prepare` shards with fully_shard on a gloo mesh. Nothing changes on GPUs."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if acc.distributed_type != DistributedType.MULTI_CPU or not _env_true("ACCELERATE_USE_FSDP"):
        return
    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        from ..errors import UserError
        raise UserError("the CPU simulation of FSDP supports fsdp_version: 2 only (configs/accelerate/fsdp.yaml)")
    AcceleratorState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin
    # as accelerate does for its own FSDP switch: every later AcceleratorState() copies PartialState's type
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def engine_name(acc) -> str:
    """'none', 'ddp', 'fsdp2' or 'deepspeed' (recorded in every training log)."""
    from accelerate.utils import DistributedType

    t = acc.distributed_type
    if t == DistributedType.NO:
        return "none"
    if t == DistributedType.FSDP:
        return "fsdp2" if acc.is_fsdp2 else "fsdp1"
    if t == DistributedType.DEEPSPEED:
        return "deepspeed"
    return "ddp"


def sharded(acc) -> bool:
    """True when the engine replaces the model's parameters by shards (FSDP, ZeRO-3): the final model must
    then be rebuilt from the gathered state."""
    return engine_name(acc) in ("fsdp2", "fsdp1", "deepspeed")


def full_state_dict(acc, model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model state on every process (a collective under a sharding engine), names as in the
    unwrapped model, tensors detached."""
    name = engine_name(acc)
    if name == "fsdp2":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # full_state_dict without cpu_offload: every rank gets the full tensors (accelerate's own
        # get_state_dict offloads to rank 0 only, which suits saving but not the evaluation that follows).
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    if name == "deepspeed":
        import deepspeed

        inner = acc.unwrap_model(model)
        params = list(inner.parameters())
        # GatheredParameters: ZeRO-3's documented way to read full weights outside forward (every rank).
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return {k: v.detach().clone() for k, v in inner.state_dict().items()}
    return {k: v.detach() for k, v in acc.unwrap_model(model).state_dict().items()}


def load_full_state_dict(acc, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full (gathered) model state into the prepared model: cut into shards under FSDP2, into the
    partitions under ZeRO-3 (GatheredParameters with a modifier rank), plainly otherwise."""
    name = engine_name(acc)
    if name == "fsdp2":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
    elif name == "deepspeed":
        import deepspeed

        inner = acc.unwrap_model(model)
        with deepspeed.zero.GatheredParameters(list(inner.parameters()), modifier_rank=0):
            inner.load_state_dict(state)
    else:
        acc.unwrap_model(model).load_state_dict(state)


def full_optimizer_tensors(opt, acc) -> tuple[dict[str, torch.Tensor], list]:
    """The optimizer state as flat named full tensors (`state.<i>.<key>`) and its param groups: sharded
    state (FSDP2 DTensors) is gathered, so a checkpoint holds the whole state whatever the process count.
    Under DeepSpeed the state lives in ZeRO's flat fp32 partitions: not saved (({}, [])), and such a run
    cannot resume (loop._resume)."""
    if engine_name(acc) == "deepspeed":
        return {}, []
    inner = getattr(opt, "optimizer", opt)  # accelerate's AcceleratedOptimizer
    sd = inner.state_dict()
    tensors = {}
    for i, st in sd["state"].items():
        for k, v in st.items():
            v = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"state.{i}.{k}"] = (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu()
    return tensors, sd["param_groups"]


def load_optimizer_tensors(opt, tensors: dict, groups: list) -> None:
    """Inverse of full_optimizer_tensors: full tensors are cut back into this process's shards where the
    parameter is sharded (FSDP2)."""
    inner = getattr(opt, "optimizer", opt)
    params = [p for g in inner.param_groups for p in g["params"]]
    state: dict = {}
    for name, t in tensors.items():
        _, i, k = name.split(".", 2)
        p = params[int(i)]
        if hasattr(p, "device_mesh") and t.dim() > 0:
            from torch.distributed.tensor import distribute_tensor

            t = distribute_tensor(t.to(p.device), p.device_mesh, p.placements)
        state.setdefault(int(i), {})[k] = t
    inner.load_state_dict({"state": state, "param_groups": groups})


def plain_model(template_cls, config, state: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                generation_config=None, device=None) -> nn.Module:
    """A plain (unsharded, unwrapped) model of class `template_cls` holding `state`; `buffers` are the
    non-persistent buffers (rotary frequencies) the state dict does not carry, taken before sharding."""
    with torch.device("meta"):
        model = template_cls(config)
    model.load_state_dict(state, strict=False, assign=True)
    for name, b in buffers.items():
        mod_name, _, attr = name.rpartition(".")
        model.get_submodule(mod_name).register_buffer(attr, b, persistent=False)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    missing = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if missing:
        raise RuntimeError(f"rebuilding the trained model: no values for {missing[:5]}")
    if generation_config is not None:
        model.generation_config = generation_config
    if device is not None:
        from ..utils import PLACED_ATTR

        model.to(device)
        setattr(model, PLACED_ATTR, str(device))  # placed by the device rule: the loop's device is resolve_device's
    return model.eval()


def release(acc) -> None:
    """End of a training: the accelerator singleton must not keep the run's model and optimizer alive, and
    under DeepSpeed transformers must stop seeing a ZeRO-3 config: accelerate registers it globally, and
    from_pretrained would then load the NEXT stage's model already partitioned (every weight empty outside a
    forward; found when `finetune` after the tiny base failed at the first weight shape)."""
    acc.free_memory()
    if engine_name(acc) == "deepspeed":
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()


def non_persistent_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    persistent = set(model.state_dict())
    return {n: b.detach().clone() for n, b in model.named_buffers() if n not in persistent}
