"""Relearning attack (docs/attacks.md#relearning-attack): fine-tune an unlearned model on a little data and watch the forgotten
answers come back.

- The forget set is split per author (rows come in author order, `qa_per_author` consecutive rows per
  author, docs/data.md#tofu-layout) into a seeded "relearn" half, which the attacker trains on, and the disjoint "probe"
  half, on which recovery is measured (`probe_relearn_split`). The split depends only on the number of
  forget rows, `qa_per_author` and the seed, so Oracle and Random (and every method) share it.
- The attacker does not know the mask: ALL parameters are trained (`mask=None`), objective `learn`
  (plain NLL on the answers), through `loc_unlearn.train.loop.train`.
- The schedule `(0, 5, 10, 25, 50)` is ONE run of K = max(schedule) optimizer steps (the loop's linear
  warmup then linear decay to 0 at step K); the model at k is that run after k steps. It is run as
  segments `max_steps = k` on the same output folder, each resuming from the previous segment's
  checkpoint, which the loop makes bit-identical (CPU) to an uninterrupted run. k = 0 is no training:
  the metrics of the model as given.
- Recovery on the probe half: `R(k) = (ES_k - ES_u) / (ES_o - ES_u)` (`recovery_ratio`).
- Variants (`RELEARN_DATA`): "forget_relearn" trains on the relearn half; "retain" (benign) trains on as
  many retain rows, drawn with the seed (`attack_rows`), so both see the same number of steps per epoch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import shutil
from pathlib import Path

from ..config import TrainConfig
from ..errors import DataError, UserError
from ..utils import write_json_atomic

RELEARN_DATA = ("forget_relearn", "retain")
"""Training data of the attack: the relearn half of the forget set, or (benign) retain rows only."""

TOFU_QA_PER_AUTHOR = 20
"""TOFU's questions per author (docs/data.md#tofu-layout); the default group size of the split."""

RECOVERY_EPS = 1e-12
"""|ES_o - ES_u| at or below this makes R(k) undefined (NaN, flagged)."""


# ----------------------------------------------------------------------------- recovery


def recovery_defined(es_u, es_o) -> bool:
    """Whether R(k) is defined: both numbers given and finite, and ES_o != ES_u (|gap| > RECOVERY_EPS)."""
    if es_u is None or es_o is None:
        return False
    es_u, es_o = float(es_u), float(es_o)
    return math.isfinite(es_u) and math.isfinite(es_o) and abs(es_o - es_u) > RECOVERY_EPS


def recovery_ratio(es_k: float, es_u: float, es_o: float) -> float:
    """`R(k) = (ES_k - ES_u) / (ES_o - ES_u)` (docs/attacks.md#recovery-rk): 0 = nothing back, 1 = everything back (it can leave
    [0, 1]: below 0 if the attack lowers ES further, above 1 if it overshoots theta_o).

    Returns float NaN when R is undefined (`recovery_defined` is False): ES_o == ES_u (unlearning changed
    nothing on the probe half, so there is nothing to recover), or ES_o / ES_u missing (None) or not
    finite. Results record such a point as `recovery: null` with `recovery_defined: false`; averages over
    seeds must skip or report them, never treat them as 0.
    """
    if es_k is None or not recovery_defined(es_u, es_o):
        return float("nan")
    return (float(es_k) - float(es_u)) / (float(es_o) - float(es_u))


def _json_float(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


# ----------------------------------------------------------------------------- the split


def _rows_digest(rows) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r.get("question"), r.get("answer")]).encode())
    return h.hexdigest()


def probe_relearn_split(forget_rows, seed: int, qa_per_author: int = TOFU_QA_PER_AUTHOR) -> tuple[list[int], list[int]]:
    """(relearn_idx, probe_idx): row indices into `forget_rows`, each sorted.

    Rows are grouped into authors of `qa_per_author` consecutive rows (TOFU: 20; the synthetic world:
    `data.qa_per_author`). Of each author's n questions a seeded `n // 2` go to relearn and the other
    `n - n // 2` to probe (for odd n the probe half is the larger). The halves are disjoint and cover the
    forget set; the result depends only on (len(forget_rows), qa_per_author, seed). Raises DataError if
    the rows do not divide into whole authors or an author has fewer than 2 questions.
    """
    n = len(forget_rows)
    if not isinstance(qa_per_author, int) or qa_per_author < 2:
        raise DataError(f"probe/relearn split: qa_per_author={qa_per_author!r}; need >= 2 questions per author "
                        f"so that both halves get one (config key attack.qa_per_author)")
    if n == 0 or n % qa_per_author:
        raise DataError(f"probe/relearn split: {n} forget rows do not divide into authors of {qa_per_author} "
                        f"questions (rows are in author order, docs/data.md#tofu-layout); set attack.qa_per_author to the "
                        f"data's questions per author")
    rng = random.Random(int(seed) * 1_000_003 + 17)
    relearn, probe = [], []
    for a in range(n // qa_per_author):
        idx = list(range(a * qa_per_author, (a + 1) * qa_per_author))
        pick = set(rng.sample(idx, qa_per_author // 2))
        relearn += [i for i in idx if i in pick]
        probe += [i for i in idx if i not in pick]
    return relearn, probe


def save_probe_split(path, relearn_idx, probe_idx, *, seed: int, qa_per_author: int, forget_rows=None) -> Path:
    """Write the split as JSON (with the seed, group size, and a digest of the forget rows if given)."""
    obj = {"seed": int(seed), "qa_per_author": int(qa_per_author), "n_rows": len(relearn_idx) + len(probe_idx),
           "relearn_idx": list(map(int, relearn_idx)), "probe_idx": list(map(int, probe_idx)),
           "rows_sha256": _rows_digest(forget_rows) if forget_rows is not None else ""}
    return write_json_atomic(path, obj)


def load_probe_split(path, forget_rows=None) -> tuple[list[int], list[int]]:
    """(relearn_idx, probe_idx) from `save_probe_split`'s JSON; with `forget_rows`, checks they are the rows
    the split was made for (count, and the digest when one was saved)."""
    p = Path(path)
    try:
        obj = json.loads(p.read_text())
        relearn, probe = obj["relearn_idx"], obj["probe_idx"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{p}: not a probe/relearn split file ({e})") from None
    if forget_rows is not None:
        if len(forget_rows) != obj.get("n_rows"):
            raise DataError(f"{p}: split made for {obj.get('n_rows')} forget rows, got {len(forget_rows)}")
        if obj.get("rows_sha256") and obj["rows_sha256"] != _rows_digest(forget_rows):
            raise DataError(f"{p}: split made for other forget rows (digest mismatch)")
    return relearn, probe


def attack_rows(data: str, forget_rows, retain_rows, relearn_idx, seed: int) -> list[dict]:
    """Training rows of variant `data` (RELEARN_DATA): "forget_relearn" = the relearn half; "retain" = a
    seeded sample (without replacement) of `len(relearn_idx)` retain rows (all of them if fewer)."""
    if data == "forget_relearn":
        return [forget_rows[i] for i in relearn_idx]
    if data == "retain":
        if not retain_rows:
            raise DataError("relearn attack data=retain needs retain rows, got none")
        rng = random.Random(int(seed) * 1_000_003 + 29)
        return rng.sample(list(retain_rows), min(len(relearn_idx), len(retain_rows)))
    raise UserError(f"relearn attack data={data!r}: expected one of {list(RELEARN_DATA)} (config key attack.relearn_data)")


# ----------------------------------------------------------------------------- the attack


def _schedule(schedule) -> list[int]:
    try:
        ks = sorted({int(k) for k in schedule})
    except (TypeError, ValueError):
        raise UserError(f"relearn schedule {schedule!r}: expected a list of step counts "
                        "(config key attack.schedule)") from None
    if not ks or ks[0] < 0 or any(float(k) != int(k) for k in schedule):
        raise UserError(f"relearn schedule {list(schedule)}: expected non-negative integers "
                        "(config key attack.schedule)")
    return ks if ks[0] == 0 else [0] + ks  # k = 0 (the model as given) is always measured: it is ES_u


def _epochs_for(steps: int, steps_per_epoch: int) -> float:
    """An `epochs` value for which the loop plans exactly `steps` steps (total = ceil(epochs * spe))."""
    e = steps / steps_per_epoch
    while math.ceil(e * steps_per_epoch) > steps:
        e = math.nextafter(e, 0.0)
    while math.ceil(e * steps_per_epoch) < steps:
        e = math.nextafter(e, math.inf)
    return e


def _measure(model, tokenizer, eval_sets, probe_idx, batch_size, es_floor) -> dict:
    from ..evaluate.token_metrics import token_metrics

    # answer_only: ES needs the answer pass alone (the paraphrased/perturbed passes would be thrown away)
    es = token_metrics(model, tokenizer, eval_sets["forget"], batch_size=batch_size, es_floor=es_floor,
                       answer_only=True)["es"]
    probe = [es[i] for i in probe_idx]
    out = {"probe_es": sum(probe) / len(probe), "forget_es": sum(es) / len(es)}
    out |= {"probe_fs": 1.0 - out["probe_es"], "forget_fs": 1.0 - out["forget_es"]}
    if eval_sets.get("retain"):
        r = token_metrics(model, tokenizer, eval_sets["retain"], batch_size=batch_size, es_floor=es_floor,
                          answer_only=True)["es"]
        out["retain_es"] = sum(r) / len(r)
    out["forget_es_rows"] = es
    return out


def relearn_attack(model, tokenizer, train_rows, eval_sets: dict, probe_idx, *, out_dir,
                   schedule=(0, 5, 10, 25, 50), train_cfg: TrainConfig | None = None, es_o: float | None = None,
                   data: str = "forget_relearn", warmup_steps: int | None = None, eval_batch_size: int = 16,
                   es_floor: str = "none", restore: bool = True, keep_checkpoints: bool = False,
                   device: str = "auto") -> dict:
    """Run the relearning attack (module docstring) on `model` and return a JSON-able dict (also written
    to `out_dir/relearn.json`).

    `train_rows`: what the attacker trains on (`attack_rows`); `eval_sets`: {"forget": the WHOLE forget set,
    in the order `probe_idx` indexes, "retain": the retain eval set (optional)}; `probe_idx`: the probe
    half (`probe_relearn_split`). `es_o`: theta_o's mean probe ES (None: R(k) undefined, flagged).
    `train_cfg`: the attacker's recipe (lr, batch_size, weight_decay, warmup_epochs, max_length, seed,
    grad_clip, mixed_precision, micro_batch_size); its `epochs`, `checkpoint_every` and `max_steps` are set
    here from the schedule, and `warmup_steps` (if given) replaces `warmup_epochs`.
    `restore`: put the given weights back afterwards (a CPU copy of the state dict is kept meanwhile);
    otherwise the model is left at k = max(schedule). The training checkpoints under `out_dir/train` (full
    models + optimizer state) are deleted as soon as the next segment no longer needs them, unless
    `keep_checkpoints`. Every call starts a fresh attack (an old `out_dir/train` is removed). `device`: the
    `device` setting the training segments run under (config key `device`; the caller places the model
    there first, e.g. through stages.ModelRef.load, so k = 0 is measured on the same device).

    Result: data, schedule, es_o, es_u, gap (es_o - es_u), recovery_defined, n_train_rows, n_probe,
    steps_per_epoch, train (the recipe used), and `points`: per k {k, probe_es, probe_fs, forget_es,
    forget_fs, retain_es, recovery, loss (last step's training loss; null at k = 0), forget_es_rows
    (per-row ES of the whole forget set)}.
    """
    from ..train.loop import train

    ks, probe_idx = _check_inputs(data, schedule, train_rows, eval_sets, probe_idx)
    cfg = train_cfg or TrainConfig()
    if cfg.batch_size < 1:
        raise UserError(f"relearn attack batch_size={cfg.batch_size}: expected >= 1")
    spe = math.ceil(len(train_rows) / cfg.batch_size) if train_rows else 1
    K = ks[-1]
    cfg = dataclasses.replace(cfg, epochs=_epochs_for(K, spe) if K else 1.0, checkpoint_every=0.0, max_steps=0)
    if warmup_steps is not None:
        cfg = dataclasses.replace(cfg, warmup_epochs=warmup_steps / spe)
    out_dir = Path(out_dir)
    train_dir = out_dir / "train"
    shutil.rmtree(train_dir, ignore_errors=True)

    saved = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()} if restore else None
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:  # the attacker trains everything, whatever was frozen before
        p.requires_grad_(True)
    points = []
    try:
        for k in ks:
            loss = None
            if k > 0:
                res = train(model, tokenizer, train_rows, [], "learn", dataclasses.replace(cfg, max_steps=k),
                            train_dir, mask=None, resume=True, device=device)
                # under a sharding engine the trained model is a new plain object (loop.TrainResult.model)
                model = res.model
                if res.log[-1]["step"] != k:
                    raise RuntimeError(f"relearn attack: training stopped at step {res.log[-1]['step']}, expected {k}")
                loss = res.log[-1]["loss"]
                if not keep_checkpoints:  # only the last one is needed to resume the next segment
                    for ck in train_dir.glob("ckpt-*"):
                        if ck.name != f"ckpt-{k}":
                            shutil.rmtree(ck)
            points.append({"k": k, **_measure(model, tokenizer, eval_sets, probe_idx, eval_batch_size, es_floor),
                           "loss": loss})
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        if saved is not None:
            model.load_state_dict(saved)
            model.eval()
    if not keep_checkpoints:
        shutil.rmtree(train_dir, ignore_errors=True)

    result = _result(points, es_o, data=data, schedule=ks, n_train_rows=len(train_rows), n_probe=len(probe_idx),
                     steps_per_epoch=spe, train=dataclasses.asdict(cfg))
    write_json_atomic(out_dir / "relearn.json", result)
    return result


def _check_inputs(data: str, schedule, train_rows, eval_sets: dict, probe_idx) -> tuple[list[int], list[int]]:
    """The attack's arguments checked before any training: (sorted schedule, probe indices as ints)."""
    if data not in RELEARN_DATA:
        raise UserError(f"relearn attack data={data!r}: expected one of {list(RELEARN_DATA)}")
    ks = _schedule(schedule)
    if not train_rows and ks[-1] > 0:
        raise DataError("relearn attack: no training rows")
    if "forget" not in eval_sets or not eval_sets["forget"]:
        raise DataError("relearn attack: eval_sets needs the whole forget set under 'forget'")
    probe_idx = [int(i) for i in probe_idx]
    if not probe_idx or min(probe_idx) < 0 or max(probe_idx) >= len(eval_sets["forget"]):
        raise DataError(f"relearn attack: probe indices must index the {len(eval_sets['forget'])} forget rows")
    return ks, probe_idx


def _result(points: list[dict], es_o, **info) -> dict:
    """The attack's JSON result: R(k) of every point from ES_u (k = 0) and ES_o, or a note saying why
    R(k) is undefined (docs/attacks.md#recovery-rk)."""
    es_u = points[0]["probe_es"]
    defined = recovery_defined(es_u, es_o)
    for p in points:
        p["recovery"] = _json_float(recovery_ratio(p["probe_es"], es_u, es_o))
    result = {"data": info.pop("data"), "schedule": info.pop("schedule"),
              "es_o": _json_float(None if es_o is None else float(es_o)), "es_u": es_u,
              "gap": None if es_o is None else _json_float(float(es_o) - es_u), "recovery_defined": defined,
              **info, "points": points}
    if not defined:
        why = ("ES_o not given" if es_o is None else f"ES_o = {es_o} is not finite" if not math.isfinite(float(es_o))
               else f"ES_o = ES_u = {es_u:.6g} on the probe half (unlearning changed nothing there)")
        result["recovery_note"] = f"R(k) undefined: {why}"
    return result


def probe_es(model, tokenizer, forget_rows, probe_idx, batch_size: int = 16, es_floor: str = "none") -> float:
    """Mean ES of `model` on the probe half (e.g. ES_o of theta_o for `relearn_attack(es_o=...)`)."""
    from ..evaluate.token_metrics import token_metrics

    rows = [forget_rows[int(i)] for i in probe_idx]
    es = token_metrics(model, tokenizer, rows, batch_size=batch_size, es_floor=es_floor, answer_only=True)["es"]
    return sum(es) / len(es)


def format_relearn_table(result: dict) -> str:
    """A small text table of one `relearn_attack` result."""
    head = f"relearn attack, data={result['data']} (ES_u {result['es_u']:.3f}, ES_o " \
           f"{'n/a' if result['es_o'] is None else format(result['es_o'], '.3f')})"
    lines = [head, f"{'k':>5}  {'probe ES':>8}  {'forget ES':>9}  {'retain ES':>9}  {'R(k)':>6}"]
    for p in result["points"]:
        r = "n/a" if p["recovery"] is None else f"{p['recovery']:.3f}"
        ret = p.get("retain_es")
        lines.append(f"{p['k']:>5}  {p['probe_es']:>8.3f}  {p['forget_es']:>9.3f}  "
                     f"{'n/a' if ret is None else format(ret, '.3f'):>9}  {r:>6}")
    if result.get("recovery_note"):
        lines.append(result["recovery_note"])
    return "\n".join(lines)

