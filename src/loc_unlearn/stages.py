"""Stages: compose data, models, masks, training and evaluation into cached, resumable runs.

Each stage is a plain function `stage(cfg, inputs...)` whose run directory is keyed by the config
sections it uses and the fingerprints of its inputs (runs.py). The commands (commands.py) and the
studies (studies/) only call these. Data flows one way (DESIGN): data -> base model -> theta_r ->
(mask) -> theta_o -> unlearning trajectory -> evaluation summaries.

The data is resolved once per stage into a `DataSource` (where the splits are, their fingerprint),
which the stage's build reads its rows from.

Several processes (`accelerate launch` / torchrun): the stages that train are `cached(collective=True)`,
so their build runs on every process. runs.cached writes metrics and the manifest from the main process;
the files such a build writes itself (models, masks, checkpoint metrics) are written under
`is_main_process()` below, because every process holds the same copy. Other stages are built by the
main process alone.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict
from pathlib import Path

from .config import REGIONS, Config, TrainConfig, method_config
from .data.source import DataSource, data_source, synthetic_world, world_args  # noqa: F401  (re-exported)
from .data.tofu import load_split
from .errors import DataError, UserError
from .evaluate.tofu import evaluate_model
from .evaluate.token_metrics import token_metrics
from .evaluate.tradeoff import mix_state_dicts, summarize_trajectory
from .masks.localize import localize as localize_mask
from .masks.mask import Mask
from .masks.diagnostics import norm_ratio
from .models.load import build_tiny, load_model, preset_base_path, save_model
from .models.value_vectors import shape
from .runs import Run, cached, path_fingerprint, wait_for
from .train.norm_cap import norm_cap
from .train.objectives import hparams_from
from .train import loop  # as a module: tests replace loop.train to prove a complete study trains nothing
from .utils import device_info, fault_point, is_main_process, place, sha256_file, write_json_atomic

# ----------------------------------------------------------------------------- models


@dataclasses.dataclass
class ModelRef:
    """A model to load: a folder or hub id, plus a fingerprint for run keys."""
    path: str
    fingerprint: str
    run: Run | None = None

    def load(self, cfg: Config):
        """(model, tokenizer), the model already on the device of `cfg.device` (utils.place): every stage
        loads its models here, so all of them run where the one setting says."""
        m = cfg.model
        # The GGUF file name applies only to the configured base model itself.
        gguf = m.gguf_file if (m.gguf_file and self.path == m.path) else ""
        model, tok = load_model(self.path, dtype=m.dtype, gguf_file=gguf, trust_remote_code=m.trust_remote_code,
                                allow_pickle=m.allow_pickle)
        return place(model, cfg.device), tok


def _ref_from_run(run: Run) -> ModelRef:
    return ModelRef(path=str(run.path / "model"), fingerprint=run.fingerprint, run=run)


def base_model(cfg: Config) -> ModelRef:
    """theta_p: the preset's pretrained model (tiny: built and pretrained here on the world facts)."""
    if cfg.model.path:
        return ModelRef(cfg.model.path, f"model:{cfg.model.path}:{cfg.model.gguf_file}")
    if cfg.model.preset == "tiny":
        return _ref_from_run(tiny_base(cfg))
    path = preset_base_path(cfg.model, cfg.runs_dir)
    if path is None:
        raise UserError(f"model preset {cfg.model.preset!r} needs model.path")
    return ModelRef(str(path), f"model:{cfg.model.preset}")


def tiny_base(cfg: Config) -> Run:
    """Tiny Llama + BPE tokenizer trained on the synthetic world, pretrained on its general facts."""
    world = synthetic_world(cfg)
    t = cfg.model.tiny

    def build(p: Path) -> dict:
        init = p / "init"
        if is_main_process():
            build_tiny(world.path, t, init)
        else:  # under several processes the main one builds the (seeded, identical) start model
            wait_for(init / "config.json")
        model, tok = load_model(str(init))
        place(model, cfg.device)
        rows = load_split(str(world.path), "pretrain")
        tc = TrainConfig(lr=t.pretrain_lr, epochs=t.pretrain_epochs, batch_size=32, weight_decay=0.01,
                         warmup_epochs=1.0, checkpoint_every=0, max_length=min(128, t.max_positions), seed=t.seed)
        model = loop.train(model, tok, rows, [], "learn", tc, p / "train", device=cfg.device).model
        if is_main_process():
            save_model(model, tok, p / "model")
        return {"pretrain_rows": len(rows), **exact_match_rate(model, tok, rows, cfg), **device_info(model)}

    return cached(cfg.runs_dir, "base", {"model": {"preset": "tiny", "tiny": asdict(t)}, "world": world.fingerprint},
                  build, collective=True)


def exact_match_rate(model, tok, rows, cfg: Config) -> dict:
    """Fraction of answers reproduced exactly by greedy decoding from the prompt (ES == 1, SPEC §2)."""
    tm = token_metrics(model, tok, rows, batch_size=cfg.eval.batch_size)
    es = tm["es"]
    return {"exact_greedy": sum(1 for e in es if e >= 1.0 - 1e-9) / max(1, len(es)), "mean_es": sum(es) / max(1, len(es))}


def _replay_rows(cfg: Config, data: DataSource) -> list[dict]:
    if not cfg.finetune.replay_split:
        return []
    try:
        return data.rows(cfg.finetune.replay_split)
    except DataError as e:
        raise DataError(f"finetune.replay_split={cfg.finetune.replay_split!r} (rows mixed into fine-tuning to "
                        f"keep general knowledge; set finetune.replay_split= to turn it off): {e}") from None


def check_data(cfg: Config, *splits: str, eval_sets: bool = False) -> None:
    """Read every split a command will use before it does any work, so a broken or missing file is named
    at once, not after hours of training (issue 14): the forget and retain splits, the fine-tuning replay
    split, the DPO refusals, `splits` (e.g. 'full') and, with `eval_sets`, the evaluation sets (SPEC §3)."""
    data = data_source(cfg)
    for split in (data.forget_split, data.retain_split, *splits):
        data.rows(split)
    _replay_rows(cfg, data)
    data.idk()
    if eval_sets:
        data.eval_sets()


def finetune(cfg: Config, base: ModelRef | None = None) -> ModelRef:
    """theta_r (split=retain90) or the full-data model (split=full): all parameters, SPEC §7 step 1."""
    data = data_source(cfg)
    split = cfg.finetune.split
    # Read both splits before any training (the base model included): a missing replay file named late, or
    # without its config key, cost a whole base pretraining.
    data.rows(split)
    _replay_rows(cfg, data)
    base = base or base_model(cfg)

    def build(p: Path) -> dict:
        model, tok = base.load(cfg)
        rows = data.rows(split)
        replay = _replay_rows(cfg, data)
        res = loop.train(model, tok, rows + replay, [], "learn", cfg.finetune.train, p / "train", device=cfg.device)
        model = res.model  # the same object unless a sharding engine (FSDP2, ZeRO-3) rebuilt it
        if is_main_process():
            save_model(model, tok, p / "model")
        out = {"split": split, "rows": len(rows), "replay_rows": len(replay),
               "train_log": res.log[-1:] if res.log else [], **exact_match_rate(model, tok, rows, cfg),
               **device_info(model)}
        if replay:
            out["replay"] = exact_match_rate(model, tok, replay, cfg)
        if split == data.retain_split:  # theta_r: how much of the unseen forget set it reproduces anyway
            out["forget"] = exact_match_rate(model, tok, data.forget_rows(), cfg)
        return out

    key = {"finetune": asdict(cfg.finetune), "base": base.fingerprint, "data": data.fingerprint}
    return _ref_from_run(cached(cfg.runs_dir, "finetune", key, build, collective=True))


def finetune_on(cfg: Config, split: str) -> ModelRef:
    """`finetune` with its split set: "full" (localization benchmark) or the retain split (theta_r)."""
    return finetune(dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, split=split)))


def retain_model(cfg: Config) -> ModelRef:
    """theta_r: fine-tuned on the retain split matching the forget split (SPEC §7 step 1; FQ reference)."""
    return finetune_on(cfg, data_source(cfg).retain_split)


# ----------------------------------------------------------------------------- masks


def localize(cfg: Config, model: ModelRef, lcfg=None) -> Path:
    """Mask file for `lcfg` (default cfg.localize) computed on `model` with forget/retain data."""
    lcfg = lcfg or cfg.localize
    data = data_source(cfg)
    src_fp = sha256_file(lcfg.source_mask) if lcfg.source_mask else ""

    def build(p: Path) -> dict:
        m, tok = model.load(cfg)
        mask = localize_mask(lcfg, m, tok, data.forget_rows(), data.retain_rows())
        # The file names its source by content, not by a path that differs between runs dirs.
        for k, fp in (("source_mask", src_fp), ("reference", path_fingerprint(lcfg.reference))):
            if mask.meta.get(k):
                mask.meta[k] = f"sha256:{fp}"
        mask.save(p / "mask.safetensors")
        return {"method": lcfg.method, "ratio": lcfg.ratio, "scope": lcfg.scope,
                "per_layer_counts": mask.per_layer_counts(), **device_info(m)}

    # Paths in keys are replaced by content hashes: the same inputs share a run in any directory.
    key = {"localize": asdict(lcfg) | {"compare": [], "source_mask": "", "reference": path_fingerprint(lcfg.reference)},
           "model": model.fingerprint, "data": data.fingerprint, "source_mask": src_fp}
    run = cached(cfg.runs_dir, "localize", key, build)
    return run.path / "mask.safetensors"


def random_mask(cfg: Config, model: ModelRef, seed: int, ratio: float, source_mask: str = "") -> Path:
    lcfg = dataclasses.replace(cfg.localize, method="random_complement" if source_mask else "random",
                               seed=seed, ratio=ratio, source_mask=source_mask, scope="global")
    return localize(cfg, model, lcfg)


# ----------------------------------------------------------------------------- injection


def full_injection_es(cfg: Config, theta_r: ModelRef) -> float:
    """Forget ES that unmasked (all-parameter) injection reaches with the same recipe: the target's base."""
    data = data_source(cfg)

    def build(p: Path) -> dict:
        model, tok = theta_r.load(cfg)
        forget = data.forget_rows()
        tc = dataclasses.replace(cfg.inject.train, lr=cfg.inject.full_lr or cfg.inject.train.lr)
        model = loop.train(model, tok, forget, data.retain_rows(), "learn_reg", tc, p / "train",
                           hparams={"alpha": cfg.inject.lam}, device=cfg.device).model
        return exact_match_rate(model, tok, forget, cfg) | device_info(model)

    key = {"inject": _inject_key(cfg, max_norm_ratio=0.0) | {"seed": None, "mask": ""}, "theta_r": theta_r.fingerprint,
           "data": data.fingerprint}
    return cached(cfg.runs_dir, "inject_full", key, build, collective=True).metrics()["mean_es"]


def _inject_key(cfg: Config, **replace) -> dict:
    # max_norm_ratio off (0) is left out, so runs cached before the option existed keep their keys;
    # the full injection passes max_norm_ratio=0 (the cap applies to the masked injection only).
    d = asdict(cfg.inject) | replace
    return {k: v for k, v in d.items() if not (k == "max_norm_ratio" and v == 0)}


def inject(cfg: Config, theta_r: ModelRef, seed: int | None = None) -> ModelRef:
    """theta_o: learn_reg on the forget set into V_tgt only (SPEC §7 step 2)."""
    seed = cfg.inject.seed if seed is None else seed
    mask_path = Path(cfg.inject.mask) if cfg.inject.mask else random_mask(cfg, theta_r, seed, cfg.inject.ratio)
    data = data_source(cfg)
    target = cfg.inject.target_es_fraction * full_injection_es(cfg, theta_r)

    def build(p: Path) -> dict:
        model, tok = theta_r.load(cfg)
        mask = Mask.load(mask_path, expect_shape=shape(model))
        before = norm_ratio(model, mask.mask)  # ~1 by construction: V_tgt is a random region of theta_r
        forget = data.forget_rows()
        t0 = time.time()
        model = loop.train(model, tok, forget, data.retain_rows(), "learn_reg", cfg.inject.train, p / "train",
                           mask=mask.mask, hparams={"alpha": cfg.inject.lam},
                           post_step=norm_cap(cfg.inject.max_norm_ratio) if cfg.inject.max_norm_ratio else None,
                           device=cfg.device).model
        train_s = time.time() - t0
        if is_main_process():
            mask.save(p / "mask.safetensors")
            save_model(model, tok, p / "model")
        em = exact_match_rate(model, tok, forget, cfg)
        # SPEC §7 fidelity: V_tgt must not be findable by its norm alone (issue 11: ratio <= 1.5).
        return {"seed": seed, "forget_es": em["mean_es"], "exact_greedy": em["exact_greedy"],
                "target_es": target, "reached": em["mean_es"] >= target, "train_s": round(train_s, 1),
                "norm_ratio": {"theta_r": before, "theta_o": norm_ratio(model, mask.mask)}, **device_info(model)}

    key = {"inject": _inject_key(cfg) | {"seed": seed, "mask": ""}, "mask": sha256_file(mask_path),
           "theta_r": theta_r.fingerprint, "data": data.fingerprint}
    return _ref_from_run(cached(cfg.runs_dir, "inject", key, build, collective=True))


def prepare_seed(cfg: Config, theta_r: ModelRef, seed: int) -> dict:
    """One seed of the controlled study (SPEC §7 steps 2-3): theta_o, injected into V_tgt, and the two
    masks keyed by REGIONS: oracle = V_tgt, random = random_complement(V_tgt) of the same size."""
    theta_o = inject(cfg, theta_r, seed)
    tgt = theta_o.run.path / "mask.safetensors"
    rdm = random_mask(cfg, theta_r, seed + 10_000, cfg.inject.ratio, source_mask=str(tgt))
    return {"seed": seed, "theta_o": theta_o, "masks": dict(zip(REGIONS, (tgt, rdm)))}


# ----------------------------------------------------------------------------- evaluation


def evaluate(cfg: Config, model: ModelRef, reference: ModelRef | None = None, es_only: bool = False) -> dict:
    """Metrics of one model (SPEC §2-3), cached; FQ against `reference` (theta_r) when given. `es_only`:
    forget/retain ES alone (eval.full_at=ends between a trajectory's end points)."""
    data = data_source(cfg)
    ref_tr = reference_truth_ratios(cfg, reference) if reference and not es_only else None

    def build(p: Path) -> dict:
        m, tok = model.load(cfg)
        return evaluate_model(m, tok, data.eval_sets(), cfg.eval, reference_truth_ratios=ref_tr,
                              es_only=es_only) | device_info(m)

    key = {"eval": eval_key(cfg), "model": model.fingerprint, "data": data.fingerprint,
           "reference": reference.fingerprint if reference and not es_only else ""} | ({"es_only": True} if es_only else {})
    return cached(cfg.runs_dir, "evaluate", key, build).metrics()


def eval_key(cfg: Config) -> dict:
    """The config that per-model metrics depend on (run keys of every stage that evaluates models)."""
    # Trajectory-summary options do not change per-model metrics.
    e = asdict(cfg.eval)
    for k in ("reference", "curve", "envelope", "left_anchor", "mu95", "full_at"):
        e.pop(k)
    return e | {"max_eval_rows": cfg.data.max_eval_rows, "forget_split": cfg.data.forget_split}


def reference_truth_ratios(cfg: Config, reference: ModelRef) -> list[float]:
    return evaluate(cfg, reference)["forget"]["truth_ratio_raw"]


# ----------------------------------------------------------------------------- unlearning


def unlearn(cfg: Config, model: ModelRef, mask_path: str | Path | None, reference: ModelRef,
            ucfg=None) -> Run:
    """Masked unlearning from `model` (theta_0); evaluates theta_0 and every checkpoint (SPEC §4)."""
    ucfg = ucfg or method_config(cfg.unlearn, cfg.unlearn.method)
    data = data_source(cfg)
    ref_tr = reference_truth_ratios(cfg, reference)
    m0 = evaluate(cfg, model, reference)

    def build(p: Path) -> dict:
        m, tok = model.load(cfg)
        mask = Mask.load(mask_path, expect_shape=shape(m)).mask if mask_path else None
        forget = data.forget_rows()
        retain = data.retain_rows()
        hp = hparams_from(ucfg)
        res = loop.train(m, tok, forget, retain, ucfg.method, ucfg.train, p / "train", mask=mask, hparams=hp,
                         idk=data.idk(), device=cfg.device)
        m = res.model  # theta_K, merged (a new object only under a sharding engine)
        sets = data.eval_sets()
        points = [_point(0, m0)]
        if cfg.eval.curve == "mix":
            # SPEC §4 option: theta(a) = (1 - a) theta_0 + a theta_K, a = 0.1 .. 1 (theta_0 is point 0).
            sd0 = {k: v.clone() for k, v in model.load(cfg)[0].state_dict().items()}
            sdk = m.state_dict()  # train() left theta_K (merged) in `m`
            for j in range(1, 11):
                mk, _ = model.load(cfg)
                mk.load_state_dict(mix_state_dicts(sd0, sdk, j / 10))
                met = _eval_point(mk, tok, sets, cfg, ref_tr, last=j == 10)
                points.append(_point(j, met) | {"mix": j / 10})
        else:
            for i, ck in enumerate(res.checkpoints):
                done = Path(ck) / "metrics.json"
                if done.is_file():  # evaluated before an interruption: written atomically, reuse it
                    met = json.loads(done.read_text())
                else:
                    base, _ = model.load(cfg)
                    met = _eval_point(loop.load_checkpoint(base, ck), tok, sets, cfg, ref_tr,
                                      last=i == len(res.checkpoints) - 1)
                    fault_point("evaluate_checkpoint")
                    if is_main_process():
                        write_json_atomic(done, met)
                points.append(_point(_step_of(ck), met))
        summ = summarize_trajectory(points, envelope=cfg.eval.envelope, left_anchor=cfg.eval.left_anchor,
                                    mode=cfg.eval.mu95)
        return {"method": ucfg.method, "mask": str(mask_path or ""), "trajectory": points,
                "aues": summ["aues"], "mu95": summ["mu95"], "mu95_not_reached": summ["mu95_not_reached"],
                "train_truncated": res.truncated, **device_info(m)} | (
                    {"mu95_note": summ["mu95_note"]} if summ["mu95_note"] else {})

    key = {"unlearn": asdict(ucfg) | {"mask": ""}, "eval": eval_key(cfg) | {k: getattr(cfg.eval, k) for k in
                                                             ("curve", "envelope", "left_anchor", "mu95")},
           "model": model.fingerprint, "mask": sha256_file(mask_path) if mask_path else "",
           "reference": reference.fingerprint, "data": data.fingerprint}
    if cfg.eval.full_at != "all":  # only then: run keys from before the option stay as they were
        key["eval"]["full_at"] = cfg.eval.full_at
    return cached(cfg.runs_dir, "unlearn", key, build, collective=True)


def _eval_point(model, tok, sets, cfg: Config, ref_tr, last: bool) -> dict:
    """A trajectory point after theta_0: the full evaluation, or ES alone between the end points (eval.full_at)."""
    es_only = cfg.eval.full_at == "ends" and not last
    return evaluate_model(model, tok, sets, cfg.eval, reference_truth_ratios=ref_tr, es_only=es_only)


def _step_of(ck) -> int:
    name = Path(ck).name
    return int(name.split("-")[-1]) if name.split("-")[-1].isdigit() else -1


def _point(step: int, met: dict) -> dict:
    p = {"step": step, "FS": met["FS"], "RS": met["RS"], "MU": met["MU"], "log10_FQ": met.get("log10_FQ")}
    return p | ({"es_only": True} if met.get("es_only") else {})
