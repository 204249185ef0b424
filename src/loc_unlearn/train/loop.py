"""The training loop (docs/objectives.md#training-recipe, docs/localizers.md#applying-a-mask) on Hugging Face accelerate.

One optimizer step = one GLOBAL batch of `cfg.batch_size` forget examples, split over processes (strided)
and micro batches. The model and optimizer go through `accelerator.prepare`, so the launch's engine (none,
DDP, FSDP2, DeepSpeed ZeRO-3; configs/accelerate/) distributes them, and the masked deltas are registered
parameters (masked.MaskedDownProj) that every engine shards and synchronizes. Each micro batch backpropagates
`sum(per-example loss) x num_processes / global batch` through `accelerator.backward`; the engines AVERAGE
gradients over processes, so the result is the sum of per-example gradients / global batch: every split of
the same global batch computes the same mean loss and gradient (up to float summation order). Every process
runs the same number of micro batches (a process short of examples runs weight-0 ones), because under FSDP2
and ZeRO-3 every forward and backward is a collective. Clipping is the engine's (`clip_grad_norm_`), and
checkpoints and the final model come from the engine's gathered state (engine.py).

Data order derives only from (seed, epoch), the same on every process, each taking its own strided part
of every global batch; dropout is reseeded from (seed, step, rank), so a run resumed from a checkpoint
sees the same batches and ends bit-identical (CPU) to an uninterrupted one.
Checkpoint files are checkpoint.py's business.

`train` is plan -> prepare -> resume -> steps -> finish. What an objective needs (retain pairs, IDK
refusals, cached reference log-probs, start-model forwards, a fixed target vector) comes from its
registry entry (objectives.Objective); nothing here knows a method by name.
"""
from __future__ import annotations

import copy
import math
import os
import random
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..config import TrainConfig
from ..data.formatting import collate, context_length, encode_fit, encode_qa, pad_id
from .. import stop
from ..errors import CheckpointError, Preempted, TrainingDiverged, UserError
from ..models.value_vectors import fingerprint, shape
from ..utils import eval_mode, fault_point, log, progress, sha256_json
from . import engine
from .checkpoint import (checkpoints, drop_resume_points, last_checkpoint, load_checkpoint, load_ref_logps,
                         resume_latest, save_checkpoint, save_ref_logps)
from .masked import MaskedDelta, delta_entries, full, merge_state
from .objectives import OBJECTIVES, Context, Objective, resolve_hparams, sequence_logps

__all__ = ["TrainResult", "load_checkpoint", "lr_at", "train"]


@dataclass
class TrainResult:
    checkpoints: list[Path] = field(default_factory=list)
    """Trajectory checkpoints in step order; the last one is the final model."""
    log: list[dict] = field(default_factory=list)
    """One dict per optimizer step: step, epoch, lr, loss, grad_norm and the objective's terms."""
    truncated: dict = field(default_factory=dict)
    """Rows whose answer was cut to fit max_length (min of train.max_length and the model's
    max_position_embeddings), per data set (forget / retain); sets with none are left out."""
    model: object = None
    """The trained model (merged, eval mode, plain: unwrapped and unsharded). Without a sharding engine it is
    the model passed in, trained in place; under FSDP2 / ZeRO-3 it is rebuilt from the gathered state and the
    model passed in must not be used any more."""
    engine: str = "none"
    """The engine that ran it: none, ddp, fsdp2, deepspeed (engine.engine_name)."""

    @property
    def final(self) -> Path | None:
        return self.checkpoints[-1] if self.checkpoints else None


def _gen(*keys: int) -> torch.Generator:
    s = 0
    for k in keys:
        s = (s * 1_000_003 + int(k)) % (2**61 - 1)
    return torch.Generator().manual_seed(s)


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warmup over `warmup` steps then linear decay to 0 at `total` (step is 0-based; the first
    and last steps get a nonzero rate)."""
    up = (step + 1) / warmup if warmup > 0 else 1.0
    down = (total - step) / max(1, total - warmup)
    return peak * max(0.0, min(up, down, 1.0))


def _run_key(objective, hp, tc: TrainConfig, mask, forget_items, retain_items, idk_items, revision: int = 0) -> str:
    """What a checkpoint must match to be resumed (max_steps excluded: it only stops early)."""
    c = asdict(tc)
    c.pop("max_steps")
    m = "" if mask is None else sha256_json(mask.nonzero().tolist())
    rev = {"revision": revision} if revision else {}  # absent at 0: keys of unrevised objectives unchanged
    return sha256_json({"objective": objective, "hp": hp, "cfg": c, "mask": m, "forget": forget_items,
                        "retain": retain_items, "idk": idk_items, **rev})


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


# ----------------------------------------------------------------------------- plan: what the run is


@dataclass
class _Plan:
    name: str
    obj: Objective
    cfg: TrainConfig
    hp: dict
    items: dict[str, list[dict]]
    """Encoded examples: forget, retain (paired per epoch; [] when not needed), idk (one per forget example)."""
    pad: int
    micro: int
    n_micro: int
    """Micro batches per process and step under several processes or DeepSpeed: the same on every process
    and at every step (a process or a step short of examples runs weight-0 ones), since collectives and
    DeepSpeed's accumulation count on it. One process without DeepSpeed runs only the ones it has."""
    spe: int
    """Steps per epoch."""
    total: int
    warmup: int
    ckpt_steps: set[int]
    key: str
    truncated: dict
    """Rows cut to fit the context, per set (TrainResult.truncated)."""


def _encode(tokenizer, rows, max_length, what, cut: dict | None = None) -> list[dict]:
    items = []
    for i, r in enumerate(rows):
        try:
            it, was_cut = encode_fit(tokenizer, r["question"], r["answer"], max_length)
        except KeyError as e:
            raise UserError(f"{what} row {i + 1}: missing field {e.args[0]!r} (expected question, answer)") from None
        items.append(it)
        if was_cut and cut is not None:
            cut[what] = cut.get(what, 0) + 1
    return items


def _encode_sets(tokenizer, name: str, obj: Objective, hp: dict, tc: TrainConfig, forget_rows, retain_rows,
                 idk, max_len: int, cut: dict) -> dict[str, list[dict]]:
    needs_retain = obj.needs_retain(hp)
    if needs_retain and not retain_rows:
        raise UserError(f"objective '{name}' with alpha={hp['alpha']} needs retain rows, got none")
    items = {"forget": _encode(tokenizer, forget_rows, max_len, "forget", cut),
             "retain": _encode(tokenizer, retain_rows, max_len, "retain", cut) if needs_retain else [],
             "idk": []}
    if cut:
        log(f"training '{name}': answers cut to {max_len} tokens in " + ", ".join(f"{v} {k} rows" for k, v in cut.items()))
    if obj.needs_idk:
        if not idk:
            raise UserError(f"objective '{name}' needs IDK refusals (idk=list of strings), got none")
        rng = random.Random(tc.seed)  # one refusal per forget example, fixed for the whole run
        items["idk"] = [encode_qa(tokenizer, r["question"], rng.choice(idk), max_len) for r in forget_rows]
    return items


def _plan(model, tokenizer, forget_rows, retain_rows, name: str, tc: TrainConfig, mask, hparams, idk,
          processes: int) -> _Plan:
    obj = OBJECTIVES.get(name)
    if tc.batch_size < 1:
        raise UserError(f"train.batch_size must be >= 1, got {tc.batch_size}")
    if not forget_rows:
        raise UserError(f"training '{name}' needs at least one forget/training row, got none")
    if tc.micro_batch_size < 0:
        raise UserError(f"train.micro_batch_size must be >= 0, got {tc.micro_batch_size}")
    hp = resolve_hparams(name, hparams, shape(model)[0])
    max_len, cut = context_length(model, tc.max_length), {}  # never past the model's positions
    items = _encode_sets(tokenizer, name, obj, hp, tc, forget_rows, retain_rows, idk, max_len, cut)
    spe = math.ceil(len(items["forget"]) / tc.batch_size)
    total = max(1, math.ceil(tc.epochs * spe))
    every = tc.checkpoint_every * spe
    ckpt_steps = {round(k * every) for k in range(1, int(total / every) + 2)} if every > 0 else set()
    key = _run_key(name, hp, tc, mask, items["forget"], items["retain"], items["idk"], obj.revision)
    micro = tc.micro_batch_size or math.ceil(tc.batch_size / processes)
    return _Plan(name=name, obj=obj, cfg=tc, hp=hp, items=items, pad=pad_id(tokenizer), micro=micro,
                 n_micro=math.ceil(math.ceil(tc.batch_size / processes) / micro), spe=spe, total=total,
                 warmup=round(tc.warmup_epochs * spe), ckpt_steps={s for s in ckpt_steps if 0 < s < total} | {total},
                 key=key, truncated=cut)


# ----------------------------------------------------------------------------- prepare: trainable state


@dataclass
class _Training:
    acc: object
    md: MaskedDelta
    snap: dict | None
    ctx: Context
    params: list
    """The trainable parameters as the engine holds them (DTensors under FSDP2)."""
    opt: torch.optim.Optimizer
    model: torch.nn.Module
    """The model as prepared by the engine (DDP wrapper, FSDP2 module): what forwards and backwards go through."""
    template: tuple
    """(class, config, non-persistent buffers, generation config, fingerprint) of the start model, taken
    before the engine shards it: enough to rebuild a plain model from the gathered state."""
    engine: str
    """engine.engine_name of the accelerator: none, ddp, fsdp2, deepspeed."""
    frozen: torch.nn.Module | None = None
    start: int = 0
    history: list[dict] = field(default_factory=list)
    ref_cache: dict[str, torch.Tensor] = field(default_factory=dict)
    written: list[Path] = field(default_factory=list)

    @property
    def device(self):
        return self.acc.device


def _prepare(model, plan: _Plan, mask, acc, post_step=None) -> _Training:
    obj, hp, cfg = plan.obj, plan.hp, plan.cfg
    model.to(acc.device)  # acc.device is the device rule's (utils.resolve_device, engine.make_accelerator)
    template = (type(model), model.config, engine.non_persistent_buffers(model),
                getattr(model, "generation_config", None), fingerprint(model))
    md = MaskedDelta(model, None if mask is None else torch.as_tensor(mask).bool())
    name = engine.engine_name(acc)
    if md.masked and engine.sharded(acc) and md._transposed():
        raise UserError(f"masked training under {name} needs a [d, d_ff] down-projection "
                        f"(model_type {model.config.model_type} stores it transposed); run it without a "
                        "sharding engine (no accelerate config, or DDP)")
    if obj.partial_forward and name == "ddp":
        # measured: RMU under DDP ended 0.23 (relative) away from one process; its stopped forwards leave
        # DDP's reducer unprepared, so the gradients are not synchronized
        raise UserError(f"objective '{plan.name}' stops its forward inside the network, which DDP cannot "
                        "synchronize: run it under FSDP2 (configs/accelerate/fsdp.yaml) or in one process")
    if name == "deepspeed":
        # ZeRO-3 steps inside backward on its own fp32 partitions: the loop's decoupled decay of the masked
        # columns (W0[:, idx] + delta) and post-step edits of the deltas (the injection's norm cap) have no
        # place to run. Plain fine-tuning (AdamW's own decay) has neither.
        if md.masked and (cfg.weight_decay > 0 or post_step is not None):
            raise UserError("masked training with weight decay or a norm cap (train.weight_decay, "
                            "inject.max_norm_ratio) is not supported under DeepSpeed ZeRO-3: use FSDP2 "
                            "(configs/accelerate/fsdp.yaml) or DDP, or set train.weight_decay=0")
        engine.configure_deepspeed(acc, plan.micro, plan.n_micro, cfg.grad_clip)
    snap = md.snapshot() if md.masked else None
    frozen = reference = None
    if obj.needs_reference:
        if md.masked:
            reference = md.disabled
        else:  # the documented exception: an unmasked run needs a frozen copy of the start model
            frozen = copy.deepcopy(model).eval().requires_grad_(False)
            reference = lambda: nullcontext(frozen)  # noqa: E731
    target = obj.target(model.config.hidden_size, hp, cfg.seed).to(acc.device) if obj.target else None
    params = md.parameters()
    if not params:
        raise UserError("the mask selects no value vectors: nothing to train (check the mask file / ratio)")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0 if md.masked else cfg.weight_decay)
    # The engine takes model and optimizer together: FSDP2 replaces the parameters by DTensor shards in
    # place and points the optimizer at them, ZeRO-3 partitions both, DDP wraps the model.
    wrapped, opt = acc.prepare(model, opt)
    params = [p for g in opt.param_groups for p in g["params"]]
    return _Training(acc=acc, md=md, snap=snap, ctx=Context(hp=hp, reference=reference, rmu_target=target),
                params=params, opt=opt, model=wrapped, template=template, engine=name, frozen=frozen)


def _load_weights(run: _Training):
    """How a checkpoint's weights go back into the run: deltas into the (possibly sharded) delta parameters,
    or a full model state through the engine."""
    def load(sd: dict) -> None:
        if run.md.masked:
            run.md.load_state_dict(sd)
        else:
            engine.load_full_state_dict(run.acc, run.model, sd)
    return load


def _resume(run: _Training, plan: _Plan, out_dir: Path) -> None:
    if run.engine == "deepspeed":
        if checkpoints(out_dir):
            log(f"training {plan.name} under DeepSpeed starts from step 0: its checkpoints hold no optimizer "
                "state (ZeRO's partitions), so they serve as trajectory points, not as resume points")
        return
    got = resume_latest(out_dir, plan.key, run.md.masked, _load_weights(run),
                        lambda t, g: engine.load_optimizer_tensors(run.opt, t, g), run.device)
    if got:
        ck, st = got
        run.start, run.history = st["step"], st["log"]
        log(f"resuming {plan.name} from {ck} (step {run.start}/{plan.total})")


def _reference_logps(run: _Training, plan: _Plan, out_dir: Path) -> None:
    """Start-model logpi of the answer sets the objective names, once (docs/objectives.md#reference-model); saved so a resumed run
    reuses them."""
    if not plan.obj.ref_logp:
        return
    if run.start > 0:
        cache = load_ref_logps(out_dir)
        if cache is None:
            raise CheckpointError(f"{out_dir / 'ref_logps.safetensors'} is missing: cannot resume {plan.name} "
                                  "without the start model's reference log-probs")
        run.ref_cache = cache
        return
    model, m = run.model, plan.micro
    with eval_mode(model), run.acc.autocast():
        for name in plan.obj.ref_logp:
            it = plan.items[name]
            run.ref_cache[name] = sequence_logps(model, (_to(collate(it[s:s + m], plan.pad), run.device)
                                                         for s in range(0, len(it), m)))
    if run.acc.is_main_process:
        save_ref_logps(out_dir, run.ref_cache)


# ----------------------------------------------------------------------------- steps


def _micro_batch(plan: _Plan, ids, retain_ids, device) -> dict:
    """forget + idk examples `ids`, their retain partners `retain_ids` (each set only if the run has it)."""
    sel = {"forget": ids, "retain": retain_ids, "idk": ids}
    return {k: _to(collate([plan.items[k][i] for i in sel[k]], plan.pad), device)
            for k in ("forget", "retain", "idk") if plan.items[k]}


def _gradients(run: _Training, plan: _Plan, step: int, perm, pairs) -> dict:
    """Set the lr and accumulate the gradient of one global batch; returns the step's log record."""
    cfg, acc, device = plan.cfg, run.acc, run.device
    P, rank = acc.num_processes, acc.process_index
    j = step % plan.spe
    pos = torch.arange(j * cfg.batch_size, min(len(perm), (j + 1) * cfg.batch_size))
    b = len(pos)
    mine = pos[rank::P]  # the same global order on every process, each its own disjoint strided part
    # Every process runs the same number of micro batches: under FSDP2 / ZeRO-3 each forward and backward
    # is a collective. A process short of examples (an epoch's last batch smaller than P, or an uneven
    # split) runs weight-0 ones, so its log keys and which parameters have gradients match the others'.
    deepspeed = run.engine == "deepspeed"
    # Only collectives need equal counts (several processes) and DeepSpeed its fixed accumulation steps; one
    # process alone runs just the micro batches it has.
    n_micro = plan.n_micro if P > 1 or deepspeed else math.ceil(len(mine) / plan.micro)
    torch.manual_seed(_gen(cfg.seed, step, rank).initial_seed())  # dropout: same per step on resume
    lr = lr_at(step, cfg.lr, plan.warmup, plan.total)
    for g in run.opt.param_groups:
        g["lr"] = lr
    sums: dict[str, torch.Tensor] = {"loss": torch.zeros((), device=device)}
    for s in range(n_micro):
        p, weight = mine[s * plan.micro:(s + 1) * plan.micro], 1.0
        if len(p) == 0:
            p, weight = pos[:1], 0.0
        ids = perm[p]
        batch = _micro_batch(plan, ids, pairs[p] if pairs is not None else None, device)
        run.ctx.ref_logp = {k: v[ids].to(device) for k, v in run.ref_cache.items()}
        with acc.autocast(), (acc.accumulate(run.model) if deepspeed else nullcontext()):
            loss, logs = plan.obj(run.model, batch, run.ctx)
            # x P: the engine averages over processes; what we want is the sum over the global batch / b.
            # DeepSpeed also divides by its accumulation steps (x n_micro) and steps its optimizer in the
            # backward of the last micro batch (accumulate() tells it which one that is).
            acc.backward(loss.float().sum() * (weight * P * (plan.n_micro if deepspeed else 1)) / b)
        sums["loss"] = sums["loss"] + weight * loss.detach().float().sum()
        for k, v in logs.items():
            sums[k] = sums.get(k, torch.zeros((), device=device)) + weight * v.detach().float().sum()
    names = sorted(sums)
    stats = torch.stack([sums[k] for k in names])
    if P > 1:
        stats = acc.reduce(stats, reduction="sum")
    stats = (stats / b).tolist()
    rec = {"step": step + 1, "epoch": (step + 1) / plan.spe, "lr": lr, "processes": P, **dict(zip(names, stats))}
    gn = acc.clip_grad_norm_(run.params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    rec["grad_norm"] = float(full(gn)) if gn is not None else float("nan")
    return rec


def _diverged(run: _Training, plan: _Plan, rec: dict, out_dir: Path) -> TrainingDiverged:
    last = run.written[-1] if run.written else last_checkpoint(out_dir)
    return TrainingDiverged(f"training '{plan.name}' diverged at step {rec['step']}: loss={rec['loss']}, "
                            f"grad_norm={rec['grad_norm']}; stopped without applying that step. Last good "
                            f"checkpoint: {last or 'none (no checkpoint written yet)'}. Lower train.lr "
                            "or change the objective's hyperparameters.")


def _checkpoint(run: _Training, plan: _Plan, out_dir: Path, step: int, resume_only: bool = False) -> None:
    # Gathering is a collective under a sharding engine: every process gathers, the main one writes.
    if run.engine == "deepspeed":  # partitions: gather through the engine, keep the deltas
        weights = engine.full_state_dict(run.acc, run.model)
        if run.md.masked:
            weights = {k: v for l, _, idx, delta in delta_entries(weights, run.md)
                       for k, v in ((f"idx.{l}", idx), (f"delta.{l}", delta))}
    else:
        weights = run.md.state_dict() if run.md.masked else engine.full_state_dict(run.acc, run.model)
    opt_tensors, groups = engine.full_optimizer_tensors(run.opt, run.acc)
    if run.acc.is_main_process:
        run.written.append(save_checkpoint(out_dir, step, weights, run.md.masked, run.template[4], opt_tensors,
                                           groups, {"step": step, "epoch": step / plan.spe,
                                                    "total_steps": plan.total, "run_key": plan.key,
                                                    "objective": plan.name, "hparams": plan.hp,
                                                    "engine": run.engine, "log": run.history,
                                                    **({"resume_only": True} if resume_only else {})}))
    run.acc.wait_for_everyone()


def _stop_signal(run: _Training) -> int:
    """The stop signal received (stop.py), 0 if none; under several processes the same answer on every
    process (the largest signal number any received), so all stop after the same step and none is left
    waiting in a collective."""
    sig = stop.requested()
    if run.acc.num_processes > 1:
        t = torch.tensor([sig], device=run.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        sig = int(t.item())
    return sig


def _stop_if_requested(run: _Training, plan: _Plan, out_dir: Path, step: int, written: bool, bar) -> None:
    """At a step boundary (`step` steps done): on a stop signal, write a checkpoint at `step` unless one
    was just `written` (a resume point only: dropped once the run has gone past it) and raise Preempted."""
    sig = _stop_signal(run)
    if not sig:
        return
    bar.close()
    where = f"of training '{plan.name}' in {out_dir}"
    if run.engine == "deepspeed":  # its checkpoints are no resume points (_resume)
        raise Preempted(sig, f"after step {step}/{plan.total} {where} (under DeepSpeed a rerun starts over)",
                        f"step 0/{plan.total}")
    if step == run.start:
        last = last_checkpoint(out_dir)
        raise Preempted(sig, f"at step {step}/{plan.total} {where}, before its next step "
                             f"({'last checkpoint ' + last.name if last else 'no checkpoint yet'})",
                        f"step {step}/{plan.total}")
    if not written:
        _checkpoint(run, plan, out_dir, step, resume_only=True)
    raise Preempted(sig, f"after step {step}/{plan.total} {where} (checkpoint ckpt-{step} written)",
                    f"step {step}/{plan.total}")


def _steps(run: _Training, plan: _Plan, out_dir: Path, post_step=None) -> None:
    cfg = plan.cfg
    quiet = not run.acc.is_main_process or os.environ.get("LOC_UNLEARN_QUIET") == "1"
    bar = progress(total=plan.total, initial=run.start, desc=f"train {plan.name}", disable=quiet)
    run.model.train()
    # A stop signal (SIGTERM: preemption) lets the current step finish; the loop stops at its end.
    with stop.deferred():
        fault_point("train_start")
        _stop_if_requested(run, plan, out_dir, run.start, False, bar)
        _step_range(run, plan, out_dir, cfg, bar, post_step)
    bar.close()


def _step_range(run: _Training, plan: _Plan, out_dir: Path, tc: TrainConfig, bar, post_step) -> None:
    N, R = len(plan.items["forget"]), len(plan.items["retain"])
    perm = pairs = None
    cur_epoch = -1
    for step in range(run.start, plan.total):
        epoch = step // plan.spe
        if epoch != cur_epoch:  # order and pairing depend only on (seed, epoch)
            perm = torch.randperm(N, generator=_gen(tc.seed, epoch, 0))
            pairs = torch.randint(R, (N,), generator=_gen(tc.seed, epoch, 1)) if R else None
            cur_epoch = epoch
        rec = _gradients(run, plan, step, perm, pairs)
        if not math.isfinite(rec["loss"]) or not math.isfinite(rec["grad_norm"]):
            bar.close()
            raise _diverged(run, plan, rec, out_dir)
        run.md.apply_weight_decay(rec["lr"], tc.weight_decay)
        run.opt.step()
        if post_step is not None:  # e.g. the injection's norm cap (train/norm_cap.py): edits deltas only
            post_step(run.md)
        fault_point("train_step")
        run.opt.zero_grad(set_to_none=True)
        run.history.append(rec)
        bar.update(1)
        bar.set_postfix(loss=f"{rec['loss']:.4f}")
        last = tc.max_steps and step + 1 >= tc.max_steps and step + 1 < plan.total
        due = step + 1 in plan.ckpt_steps or last
        if due:
            _checkpoint(run, plan, out_dir, step + 1)
        _stop_if_requested(run, plan, out_dir, step + 1, due, bar)
        if last:
            break


def _finish(run: _Training, plan: _Plan, out_dir: Path) -> TrainResult:
    # Trajectory = checkpoints at the planned steps (including ones written before a resume) + where we stopped.
    last_step = run.history[-1]["step"] if run.history else run.start
    if run.acc.is_main_process:
        drop_resume_points(out_dir, keep=plan.ckpt_steps | {last_step})
    have = dict(checkpoints(out_dir))
    result = [have[s] for s in sorted(plan.ckpt_steps) if s <= last_step and s in have]
    if last_step in have and have[last_step] not in result:
        result.append(have[last_step])
    md, acc = run.md, run.acc
    if engine.sharded(acc):
        # The model passed in now holds shards: rebuild a plain one from the gathered state (every process).
        state = engine.full_state_dict(acc, run.model)
        if md.masked:
            state = merge_state(state, md)
            # docs/localizers.md#applying-a-mask on the gathered weights: nothing outside the mask changed, bit for bit
            md.check_unmasked_unchanged(run.snap, now={k: state[k] for k in run.snap if k in state})
        cls, config, buffers, gen, _ = run.template
        model = engine.plain_model(cls, config, state, buffers, gen, device=acc.device)
    else:
        model = acc.unwrap_model(run.model, keep_fp32_wrapper=False)
        if md.masked:
            md.merge()
            md.check_unmasked_unchanged(run.snap)  # docs/localizers.md#applying-a-mask: nothing outside the mask changed, bit for bit
        else:
            for q in model.parameters():
                q.grad = None
    run.frozen = run.ctx.reference = None
    engine.release(acc)
    model.eval()
    return TrainResult(checkpoints=result, log=run.history, truncated=plan.truncated, model=model, engine=run.engine)


# ----------------------------------------------------------------------------- entry point


def train(model, tokenizer, forget_rows, retain_rows, objective: str, train_cfg: TrainConfig, out_dir,
          mask=None, hparams: dict | None = None, idk: list[str] | None = None, resume: bool = True,
          post_step=None, device: str = "auto") -> TrainResult:
    """Train `model` with `objective` on `forget_rows` (paired with `retain_rows`), updating only the value
    vectors in `mask` [L, d_ff] (None = all parameters), on the device of the `device` setting
    (utils.resolve_device) under whatever engine the launch configured. Returns the checkpoints, the
    per-step log and the final model (`.model`: merged, eval mode; the same object as `model`, trained in
    place, unless a sharding engine ran it). `post_step(masked_delta)`, if given, runs after every
    optimizer step (masked runs: it may change the deltas, nothing else). See the module docstring."""
    out_dir = Path(out_dir)
    acc = engine.make_accelerator(train_cfg.mixed_precision, device)
    plan = _plan(model, tokenizer, forget_rows, retain_rows, objective, train_cfg, mask, hparams, idk,
                 acc.num_processes)
    run = _prepare(model, plan, mask, acc, post_step)
    if resume:
        _resume(run, plan, out_dir)
    _reference_logps(run, plan, out_dir)
    _steps(run, plan, out_dir, post_step)
    return _finish(run, plan, out_dir)
