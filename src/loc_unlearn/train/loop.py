"""The training loop (SPEC §5, §6 "Applying a mask", §7 steps 1-3) on Hugging Face accelerate.

One optimizer step = one GLOBAL batch of `cfg.batch_size` forget examples, split over processes (strided)
and micro batches. Each micro batch adds `sum(per-example loss) / global batch` to the gradient, and the
processes SUM their gradients with one all-reduce, so every split of the same global batch computes the
same mean loss and gradient (up to float summation order). The model is not wrapped in DDP on purpose:
the trainable tensors are MaskedDelta's deltas (not module parameters), RMU leaves later layers unused,
and an explicit sum all-reduce makes the normalization exact without the x num_processes factor.

Data order derives only from (seed, epoch) and dropout is reseeded from (seed, step, rank), so a run
resumed from a checkpoint sees the same batches and ends bit-identical (CPU) to an uninterrupted one.
Checkpoints `out_dir/ckpt-<step>/` are written to a temp folder and renamed: a checkpoint exists iff it
is complete; its manifest.json holds the sha256 of every file.
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import re
import shutil
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..config import TrainConfig
from ..data.formatting import collate, context_length, encode_fit, encode_qa
from ..errors import CheckpointError, TrainingDiverged, UserError
from ..models.value_vectors import fingerprint, shape, value_matrix
from ..utils import fault_point, log, progress, save_safetensors_atomic, sha256_file, sha256_json, write_json_atomic
from .masked import MaskedDelta
from .objectives import NEEDS_REF_LOGP, OBJECTIVES, Context, resolve_hparams, rmu_target, sequence_logps

CKPT_RE = re.compile(r"^ckpt-(\d+)$")


@dataclass
class TrainResult:
    checkpoints: list[Path] = field(default_factory=list)
    """Trajectory checkpoints in step order; the last one is the final model."""
    log: list[dict] = field(default_factory=list)
    """One dict per optimizer step: step, epoch, lr, loss, grad_norm and the objective's terms."""
    truncated: dict = field(default_factory=dict)
    """Rows whose answer was cut to fit max_length (min of train.max_length and the model's
    max_position_embeddings), per data set (forget / retain); sets with none are left out."""

    @property
    def final(self) -> Path | None:
        return self.checkpoints[-1] if self.checkpoints else None


def _accelerator(mixed_precision: str):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    cpu = not torch.cuda.is_available()
    st = AcceleratorState._shared_state
    # The state is a process-wide singleton; stages run several trainings with different precisions.
    if st and st.get("_mixed_precision", mixed_precision) != mixed_precision:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


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


def _run_key(objective, hp, cfg: TrainConfig, mask, forget_items, retain_items, idk_items) -> str:
    """What a checkpoint must match to be resumed (max_steps excluded: it only stops early)."""
    c = asdict(cfg)
    c.pop("max_steps")
    m = "" if mask is None else sha256_json(mask.nonzero().tolist())
    return sha256_json({"objective": objective, "hp": hp, "cfg": c, "mask": m, "forget": forget_items,
                        "retain": retain_items, "idk": idk_items})


# ----------------------------------------------------------------------------- checkpoints


def _opt_tensors(opt) -> tuple[dict, list]:
    sd = opt.state_dict()
    tensors = {f"state.{i}.{k}": v if torch.is_tensor(v) else torch.tensor(v)
               for i, st in sd["state"].items() for k, v in st.items()}
    return tensors, sd["param_groups"]


def _load_opt(opt, tensors: dict, groups: list) -> None:
    state: dict = {}
    for name, t in tensors.items():
        _, i, k = name.split(".", 2)
        state.setdefault(int(i), {})[k] = t
    opt.load_state_dict({"state": state, "param_groups": groups})


def _save_checkpoint(out_dir: Path, step: int, md: MaskedDelta, opt, state: dict) -> Path:
    final = out_dir / f"ckpt-{step}"
    tmp = out_dir / f".tmp-ckpt-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model = md.model
    meta = {"format": "masked_delta" if md.masked else "full", **{k: str(v) for k, v in fingerprint(model).items()}}
    if md.masked:
        save_safetensors_atomic(md.state_dict(), tmp / "delta.safetensors", metadata=meta)
    else:
        # clone: tied weights share storage, which safetensors refuses to write
        save_safetensors_atomic({k: v.detach().clone() for k, v in model.state_dict().items()},
                                tmp / "model.safetensors", metadata=meta)
    tensors, groups = _opt_tensors(opt)
    save_safetensors_atomic(tensors, tmp / "optimizer.safetensors")
    fault_point("checkpoint_save")  # reliability tests: a kill here leaves only a .tmp-ckpt folder
    write_json_atomic(tmp / "trainer_state.json", {**state, "param_groups": groups})
    write_json_atomic(tmp / "manifest.json", {p.name: sha256_file(p) for p in sorted(tmp.iterdir())})
    if final.exists():  # the same step written by an earlier attempt: replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _verify(ckpt: Path) -> None:
    man = ckpt / "manifest.json"
    if not man.is_file():
        raise CheckpointError(f"checkpoint {ckpt} has no manifest.json (not a complete checkpoint)")
    try:
        files = json.loads(man.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"checkpoint {ckpt}: manifest.json is not valid JSON") from None
    for name, digest in files.items():
        p = ckpt / name
        if not p.is_file() or sha256_file(p) != digest:
            raise CheckpointError(f"checkpoint {ckpt}: {name} is missing or corrupted (sha256 mismatch)")


def _checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    if not out_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out_dir.iterdir() if (m := CKPT_RE.match(p.name)) and p.is_dir()]
    return sorted(found)


@torch.no_grad()
def load_checkpoint(base_model, ckpt_dir) -> torch.nn.Module:
    """Rebuild the model at `ckpt_dir` from `base_model` (the model training started from), in place:
    masked checkpoints add their deltas to the masked columns (same arithmetic as MaskedDelta.merge),
    full ones load all weights. Verifies the sha256 manifest first."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    ckpt = Path(ckpt_dir)
    _verify(ckpt)
    if (ckpt / "delta.safetensors").is_file():
        with safe_open(str(ckpt / "delta.safetensors"), "pt") as f:
            meta = f.metadata() or {}
        L, d_ff = shape(base_model)
        if (meta.get("n_layers"), meta.get("d_ff")) != (str(L), str(d_ff)):
            raise CheckpointError(f"checkpoint {ckpt} was trained on a model with n_layers={meta.get('n_layers')}, "
                                  f"d_ff={meta.get('d_ff')}; this model has n_layers={L}, d_ff={d_ff}")
        sd = load_file(str(ckpt / "delta.safetensors"))
        for l in range(L):
            w = value_matrix(base_model, l)
            idx, d = sd[f"idx.{l}"].to(w.device), sd[f"delta.{l}"].to(w.device)
            w[:, idx] = (w[:, idx].float() + d.float()).to(w.dtype)
    elif (ckpt / "model.safetensors").is_file():
        sd = load_file(str(ckpt / "model.safetensors"))
        try:
            base_model.load_state_dict(sd)
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint {ckpt} does not fit this model: {str(e)[:300]}") from None
    else:
        raise CheckpointError(f"checkpoint {ckpt} holds neither delta.safetensors nor model.safetensors")
    return base_model


# ----------------------------------------------------------------------------- the loop


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


def train(model, tokenizer, forget_rows, retain_rows, objective: str, train_cfg: TrainConfig, out_dir,
          mask=None, hparams: dict | None = None, idk: list[str] | None = None, resume: bool = True) -> TrainResult:
    """Train `model` in place with `objective` on `forget_rows` (paired with `retain_rows`), updating only
    the value vectors in `mask` [L, d_ff] (None = all parameters). Leaves the final weights in `model`
    (merged, eval mode) and returns the checkpoints and the per-step log. See the module docstring."""
    cfg = train_cfg
    out_dir = Path(out_dir)
    fn = OBJECTIVES.get(objective)
    if cfg.batch_size < 1:
        raise UserError(f"train.batch_size must be >= 1, got {cfg.batch_size}")
    if not forget_rows:
        raise UserError(f"training '{objective}' needs at least one forget/training row, got none")
    acc = _accelerator(cfg.mixed_precision)
    P, rank = acc.num_processes, acc.process_index
    if cfg.micro_batch_size < 0:
        raise UserError(f"train.micro_batch_size must be >= 0, got {cfg.micro_batch_size}")
    micro = cfg.micro_batch_size or math.ceil(cfg.batch_size / P)

    hp = resolve_hparams(objective, hparams, shape(model)[0] if objective == "rmu" else 0)
    needs_retain = objective == "rmu" or hp["alpha"] != 0
    if needs_retain and not retain_rows:
        raise UserError(f"objective '{objective}' with alpha={hp['alpha']} needs retain rows, got none")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    max_len, cut = context_length(model, cfg.max_length), {}  # never past the model's positions
    f_items = _encode(tokenizer, forget_rows, max_len, "forget", cut)
    r_items = _encode(tokenizer, retain_rows, max_len, "retain", cut) if needs_retain else []
    if cut:
        log(f"training '{objective}': answers cut to {max_len} tokens in "
            + ", ".join(f"{v} {k} rows" for k, v in cut.items()))
    i_items = []
    if objective == "dpo":
        if not idk:
            raise UserError("objective 'dpo' needs IDK refusals (idk=list of strings), got none")
        rng = random.Random(cfg.seed)  # one refusal per forget example, fixed for the whole run
        i_items = [encode_qa(tokenizer, r["question"], rng.choice(idk), max_len) for r in forget_rows]
    N = len(f_items)
    spe = math.ceil(N / cfg.batch_size)
    total = max(1, math.ceil(cfg.epochs * spe))
    warmup = round(cfg.warmup_epochs * spe)
    every = cfg.checkpoint_every * spe
    ckpt_steps = {round(k * every) for k in range(1, int(total / every) + 2)} if every > 0 else set()
    ckpt_steps = {s for s in ckpt_steps if 0 < s < total} | {total}
    key = _run_key(objective, hp, cfg, mask, f_items, r_items, i_items)

    device = acc.device
    model.to(device)
    mask_t = None if mask is None else torch.as_tensor(mask).bool()
    md = MaskedDelta(model, mask_t)
    snap = md.snapshot() if md.masked else None
    frozen = None
    if objective == "rmu":
        if md.masked:
            reference = md.disabled
        else:  # the documented exception: unmasked RMU needs a frozen copy of the start model
            frozen = copy.deepcopy(model).eval().requires_grad_(False)
            reference = lambda: nullcontext(frozen)  # noqa: E731
    else:
        reference = None
    target = rmu_target(model.config.hidden_size, hp["rmu_c"], cfg.seed).to(device) if objective == "rmu" else None

    params = md.parameters()
    if not params:
        raise UserError("the mask selects no value vectors: nothing to train (check the mask file / ratio)")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0 if md.masked else cfg.weight_decay)

    # ---- resume
    start, history, ref_cache = 0, [], {}
    if resume:
        for step, ck in reversed(_checkpoints(out_dir)):
            try:
                _verify(ck)
            except CheckpointError as e:
                log(f"skipping damaged checkpoint: {e}")
                continue
            st = json.loads((ck / "trainer_state.json").read_text())
            if st.get("run_key") != key:
                raise CheckpointError(f"{ck} was written by a different run (objective, config, mask or data "
                                      f"differ); use another out_dir or delete {out_dir}")
            from safetensors.torch import load_file
            md.load_state_dict(load_file(str(ck / ("delta.safetensors" if md.masked else "model.safetensors")),
                                         device=str(device)))
            _load_opt(opt, load_file(str(ck / "optimizer.safetensors"), device=str(device)), st["param_groups"])
            start, history = st["step"], st["log"]
            log(f"resuming {objective} from {ck} (step {start}/{total})")
            break

    # ---- reference log-probs of the start model, once (SPEC §5); saved so a resumed run reuses them
    if objective in NEEDS_REF_LOGP:
        cache_file = out_dir / "ref_logps.safetensors"
        if resume and start > 0 and cache_file.is_file():
            from safetensors.torch import load_file
            ref_cache = load_file(str(cache_file))
        else:
            if start > 0:
                raise CheckpointError(f"{cache_file} is missing: cannot resume {objective} without the start "
                                      "model's reference log-probs")
            model.eval()
            items = {"forget": f_items, "idk": i_items}
            with acc.autocast():
                for name in NEEDS_REF_LOGP[objective]:
                    it = items[name]
                    ref_cache[name] = sequence_logps(model, (_to(collate(it[s:s + micro], pad), device)
                                                             for s in range(0, len(it), micro)))
            if acc.is_main_process:
                save_safetensors_atomic(ref_cache, cache_file)

    # ---- train
    ctx = Context(hp=hp, reference=reference, rmu_target=target)
    ckpts: list[Path] = []
    quiet = not acc.is_main_process or os.environ.get("LOC_UNLEARN_QUIET") == "1"
    bar = progress(total=total, initial=start, desc=f"train {objective}", disable=quiet)
    model.train()
    step = start
    perm = pairs = None
    cur_epoch = -1
    for step in range(start, total):
        epoch, j = divmod(step, spe)
        if epoch != cur_epoch:  # order and pairing depend only on (seed, epoch)
            perm = torch.randperm(N, generator=_gen(cfg.seed, epoch, 0))
            pairs = torch.randint(len(r_items), (N,), generator=_gen(cfg.seed, epoch, 1)) if r_items else None
            cur_epoch = epoch
        pos = torch.arange(j * cfg.batch_size, min(N, (j + 1) * cfg.batch_size))
        b = len(pos)
        mine = pos[rank::P]
        torch.manual_seed(_gen(cfg.seed, step, rank).initial_seed())  # dropout: same per step on resume
        lr = lr_at(step, cfg.lr, warmup, total)
        for g in opt.param_groups:
            g["lr"] = lr
        sums: dict[str, torch.Tensor] = {"loss": torch.zeros((), device=device)}
        for s in range(0, len(mine), micro):
            p = mine[s:s + micro]
            ids = perm[p]
            batch = {"forget": _to(collate([f_items[i] for i in ids], pad), device)}
            if r_items:
                batch["retain"] = _to(collate([r_items[i] for i in pairs[p]], pad), device)
            if i_items:
                batch["idk"] = _to(collate([i_items[i] for i in ids], pad), device)
            ctx.ref_logp = {k: v[ids].to(device) for k, v in ref_cache.items()}
            with acc.autocast():
                loss, logs = fn(model, batch, ctx)
            (loss.float().sum() / b).backward()
            sums["loss"] = sums["loss"] + loss.detach().float().sum()
            for k, v in logs.items():
                sums[k] = sums.get(k, torch.zeros((), device=device)) + v.detach().float().sum()
        names = sorted(sums)
        stats = torch.stack([sums[k] for k in names])
        if P > 1:
            torch.distributed.all_reduce(stats)
            for q in params:
                if q.grad is not None:
                    torch.distributed.all_reduce(q.grad)
        stats = (stats / b).tolist()
        rec = {"step": step + 1, "epoch": (step + 1) / spe, "lr": lr, "processes": P, **dict(zip(names, stats))}
        gn = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        rec["grad_norm"] = float(gn)
        if not math.isfinite(rec["loss"]) or not math.isfinite(rec["grad_norm"]):
            last = ckpts[-1] if ckpts else (_checkpoints(out_dir)[-1][1] if _checkpoints(out_dir) else None)
            bar.close()
            raise TrainingDiverged(f"training '{objective}' diverged at step {step + 1}: loss={rec['loss']}, "
                                   f"grad_norm={rec['grad_norm']}; stopped without applying that step. Last good "
                                   f"checkpoint: {last or 'none (no checkpoint written yet)'}. Lower train.lr "
                                   "or change the objective's hyperparameters.")
        md.apply_weight_decay(lr, cfg.weight_decay)
        opt.step()
        fault_point("train_step")
        opt.zero_grad(set_to_none=True)
        history.append(rec)
        bar.update(1)
        bar.set_postfix(loss=f"{rec['loss']:.4f}")
        stop = cfg.max_steps and step + 1 >= cfg.max_steps and step + 1 < total
        if step + 1 in ckpt_steps or stop:
            if acc.is_main_process:
                ckpts.append(_save_checkpoint(out_dir, step + 1, md, opt, {
                    "step": step + 1, "epoch": (step + 1) / spe, "total_steps": total, "run_key": key,
                    "objective": objective, "hparams": hp, "log": history}))
            acc.wait_for_everyone()
        if stop:
            break
    bar.close()

    # Trajectory = checkpoints at the planned steps (including ones written before a resume) + where we stopped.
    last_step = history[-1]["step"] if history else start
    have = dict(_checkpoints(out_dir))
    result = [have[s] for s in sorted(ckpt_steps) if s <= last_step and s in have]
    if last_step in have and have[last_step] not in result:
        result.append(have[last_step])

    if md.masked:
        md.merge()
        md.check_unmasked_unchanged(snap)  # SPEC §6: nothing outside the mask changed, bit for bit
    else:
        for q in model.parameters():
            q.grad = None
    del frozen
    model.eval()
    return TrainResult(checkpoints=result, log=history, truncated=cut)


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}
