"""Stages: compose data, models, masks, training and evaluation into cached, resumable runs.

Each stage is a plain function `stage(cfg, inputs...) -> Run` whose run directory is keyed by the
config sections it uses and the fingerprints of its inputs (runs.py). The CLI commands (`cmd_*`) and
the study runners only call these. Data flows one way (DESIGN): data -> base model -> theta_r ->
(mask) -> theta_o -> unlearning trajectory -> evaluation summaries.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import asdict
from pathlib import Path

from .config import Config, TrainConfig, method_config
from .errors import DataError, UserError
from .runs import Run, cached
from .utils import fault_point, is_main_process, log, sha256_file, sha256_json, write_json_atomic

# ----------------------------------------------------------------------------- config checks


def check_config(cfg: Config) -> None:
    """Fail fast, before any work, on names and ranges a long run would only trip over later."""
    from .errors import ConfigError
    from .masks.localize import LOCALIZERS
    from .train.objectives import OBJECTIVES

    for key, value in (("unlearn.method", [cfg.unlearn.method]), ("study.methods", cfg.study.methods)):
        for name in value:
            if name not in OBJECTIVES:
                raise ConfigError(f"{key}: unknown unlearning method {name!r}; known: {', '.join(sorted(OBJECTIVES))}")
    for key, value in (("localize.method", [cfg.localize.method]), ("study.localizers", cfg.study.localizers)):
        for name in value:
            if name not in LOCALIZERS:
                raise ConfigError(f"{key}: unknown localization method {name!r}; known: {', '.join(sorted(LOCALIZERS))}")
    for key in ("localize.ratio", "inject.ratio"):
        sec, field = key.split(".")
        r = getattr(getattr(cfg, sec), field)
        if not 0 < r <= 1:
            raise ConfigError(f"{key}={r}: expected a fraction of value vectors in (0, 1]")
    for name in cfg.unlearn.per_method:
        if name not in OBJECTIVES:
            raise ConfigError(f"unlearn.per_method: unknown unlearning method {name!r}; known: {', '.join(sorted(OBJECTIVES))}")
        method_config(cfg.unlearn, name)
    if cfg.study.seeds < 1:
        raise ConfigError(f"study.seeds={cfg.study.seeds}: expected at least 1")
    for sec in ("finetune", "inject", "unlearn"):
        t = getattr(cfg, sec).train
        if t.lr <= 0 or t.epochs <= 0 or t.batch_size < 1:
            raise ConfigError(f"{sec}.train: lr and epochs must be > 0 and batch_size >= 1 "
                              f"(got lr={t.lr}, epochs={t.epochs}, batch_size={t.batch_size})")


# ----------------------------------------------------------------------------- data


def _data_key(cfg: Config) -> dict:
    skip = {"source", "forget_split", "retain_split", "max_eval_rows"}
    return {k: v for k, v in asdict(cfg.data).items() if k not in skip}


def synthetic_world(cfg: Config) -> Run:
    return _synthetic_world(cfg.runs_dir, tuple(sorted(_data_key(cfg).items())))


@functools.lru_cache(maxsize=8)
def _synthetic_world(runs_dir: str, items: tuple) -> Run:
    # Memoized per process: every stage asks for the data; generate/verify it once.
    from .data.synthetic import write_world

    d = dict(items)

    def build(p: Path) -> dict:
        write_world(p, **d)
        return {"files": sorted(f.name for f in p.iterdir() if f.is_file())}

    from .data.synthetic import GENERATOR_VERSION

    return cached(runs_dir, "data", {"data": d, "generator_version": GENERATOR_VERSION}, build)


def data_source(cfg: Config) -> tuple[str, str]:
    """(source for tofu.load_split, fingerprint of the data)."""
    src = cfg.data.source
    if src == "synthetic":
        run = synthetic_world(cfg)
        return str(run.path), run.fingerprint
    p = Path(src)
    if p.is_dir():
        files = {f.name: sha256_file(f) for f in sorted(p.iterdir()) if f.suffix in (".json", ".jsonl")}
        return str(p), sha256_json(files)
    return src, f"hub:{src}"


def retain_split(cfg: Config) -> str:
    from .data.tofu import retain_split_for

    return cfg.data.retain_split or retain_split_for(cfg.data.forget_split)


def load_rows(cfg: Config, split: str) -> list[dict]:
    from .data.tofu import load_split

    return load_split(data_source(cfg)[0], split)


def load_idk(cfg: Config) -> list[str]:
    from .data.tofu import load_idk as _load_idk

    return _load_idk(data_source(cfg)[0])


EVAL_SETS = {"forget": None, "retain": "retain_perturbed", "real_authors": "real_authors_perturbed",
             "world_facts": "world_facts_perturbed"}


def eval_sets(cfg: Config) -> dict[str, list[dict]]:
    """The eval sets of SPEC §3. Real-authors / world-facts sets are optional (MU says which it used)."""
    sets = {}
    for name, split in EVAL_SETS.items():
        split = split or f"{cfg.data.forget_split}_perturbed"
        try:
            rows = load_rows(cfg, split)
        except DataError:
            if name in ("forget", "retain"):
                raise
            log(f"eval set {split} not found in {cfg.data.source}; Model Utility will use the sets it has")
            continue
        if cfg.data.max_eval_rows:
            rows = rows[: cfg.data.max_eval_rows]
        sets[name] = rows
    return sets


# ----------------------------------------------------------------------------- models


@dataclasses.dataclass
class ModelRef:
    """A model to load: a folder or hub id, plus a fingerprint for run keys."""
    path: str
    fingerprint: str
    run: Run | None = None

    def load(self, cfg: Config):
        from .models.load import load_model

        m = cfg.model
        # The GGUF file name applies only to the configured base model itself.
        gguf = m.gguf_file if (m.gguf_file and self.path == m.path) else ""
        return load_model(self.path, dtype=m.dtype, gguf_file=gguf, trust_remote_code=m.trust_remote_code,
                          allow_pickle=m.allow_pickle)


def _ref_from_run(run: Run) -> ModelRef:
    return ModelRef(path=str(run.path / "model"), fingerprint=run.fingerprint, run=run)


def base_model(cfg: Config) -> ModelRef:
    """theta_p: the preset's pretrained model (tiny: built and pretrained here on the world facts)."""
    from .models.load import preset_base_path

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
    from .data.tofu import load_split
    from .models.load import build_tiny, load_model, save_model
    from .train.loop import train

    world = synthetic_world(cfg)
    t = cfg.model.tiny

    def build(p: Path) -> dict:
        init = p / "init"
        if is_main_process():
            build_tiny(world.path, t, init)
        else:  # under several processes the main one builds the (seeded, identical) start model
            from .runs import _wait_for

            _wait_for(init / "config.json")
        model, tok = load_model(str(init))
        rows = load_split(str(world.path), "pretrain")
        tc = TrainConfig(lr=t.pretrain_lr, epochs=t.pretrain_epochs, batch_size=32, weight_decay=0.01,
                         warmup_epochs=1.0, checkpoint_every=0, max_length=min(128, t.max_positions), seed=t.seed)
        train(model, tok, rows, [], "learn", tc, p / "train")
        if is_main_process():
            save_model(model, tok, p / "model")
        return {"pretrain_rows": len(rows), **exact_match_rate(model, tok, rows, cfg)}

    return cached(cfg.runs_dir, "base", {"model": {"preset": "tiny", "tiny": asdict(t)}, "world": world.fingerprint},
                  build, collective=True)


def exact_match_rate(model, tok, rows, cfg: Config) -> dict:
    """Fraction of answers reproduced exactly by greedy decoding from the prompt (ES == 1, SPEC §2)."""
    from .evaluate.token_metrics import token_metrics

    tm = token_metrics(model, tok, rows, batch_size=cfg.eval.batch_size)
    es = tm["es"]
    return {"exact_greedy": sum(1 for e in es if e >= 1.0 - 1e-9) / max(1, len(es)), "mean_es": sum(es) / max(1, len(es))}


def finetune(cfg: Config, base: ModelRef | None = None) -> ModelRef:
    """theta_r (split=retain90) or the full-data model (split=full): all parameters, SPEC §7 step 1."""
    from .models.load import save_model
    from .train.loop import train

    base = base or base_model(cfg)
    src, data_fp = data_source(cfg)
    split = cfg.finetune.split

    def build(p: Path) -> dict:
        model, tok = base.load(cfg)
        rows = load_rows(cfg, split)
        replay = load_rows(cfg, cfg.finetune.replay_split) if cfg.finetune.replay_split else []
        res = train(model, tok, rows + replay, [], "learn", cfg.finetune.train, p / "train")
        if is_main_process():
            save_model(model, tok, p / "model")
        out = {"split": split, "rows": len(rows), "replay_rows": len(replay),
               "train_log": res.log[-1:] if res.log else [], **exact_match_rate(model, tok, rows, cfg)}
        if replay:
            out["replay"] = exact_match_rate(model, tok, replay, cfg)
        return out

    key = {"finetune": asdict(cfg.finetune), "base": base.fingerprint, "data": data_fp}
    return _ref_from_run(cached(cfg.runs_dir, "finetune", key, build, collective=True))


def finetune_on(cfg: Config, split: str) -> ModelRef:
    """`finetune` with its split set: "full" (localization benchmark) or the retain split (theta_r)."""
    return finetune(dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, split=split)))


def retain_model(cfg: Config) -> ModelRef:
    """theta_r: fine-tuned on the retain split matching the forget split (SPEC §7 step 1; FQ reference)."""
    return finetune_on(cfg, retain_split(cfg))


# ----------------------------------------------------------------------------- masks


def localize(cfg: Config, model: ModelRef, lcfg=None) -> Path:
    """Mask file for `lcfg` (default cfg.localize) computed on `model` with forget/retain data."""
    from .masks.localize import localize as _localize

    lcfg = lcfg or cfg.localize
    _, data_fp = data_source(cfg)
    src_fp = sha256_file(lcfg.source_mask) if lcfg.source_mask else ""

    def build(p: Path) -> dict:
        m, tok = model.load(cfg)
        forget = load_rows(cfg, cfg.data.forget_split)
        retain = load_rows(cfg, retain_split(cfg))
        mask = _localize(lcfg, m, tok, forget, retain)
        mask.save(p / "mask.safetensors")
        return {"method": lcfg.method, "ratio": lcfg.ratio, "scope": lcfg.scope,
                "per_layer_counts": mask.per_layer_counts()}

    key = {"localize": asdict(lcfg) | {"compare": []}, "model": model.fingerprint, "data": data_fp,
           "source_mask": src_fp}
    run = cached(cfg.runs_dir, "localize", key, build)
    return run.path / "mask.safetensors"


def random_mask(cfg: Config, model: ModelRef, seed: int, ratio: float, source_mask: str = "") -> Path:
    lcfg = dataclasses.replace(cfg.localize, method="random_complement" if source_mask else "random",
                               seed=seed, ratio=ratio, source_mask=source_mask, scope="global")
    return localize(cfg, model, lcfg)


# ----------------------------------------------------------------------------- injection


def full_injection_es(cfg: Config, theta_r: ModelRef) -> float:
    """Forget ES that unmasked (all-parameter) injection reaches with the same recipe: the target's base."""
    from .train.loop import train

    _, data_fp = data_source(cfg)

    def build(p: Path) -> dict:
        model, tok = theta_r.load(cfg)
        forget = load_rows(cfg, cfg.data.forget_split)
        retain = load_rows(cfg, retain_split(cfg))
        tc = dataclasses.replace(cfg.inject.train, lr=cfg.inject.full_lr or cfg.inject.train.lr)
        train(model, tok, forget, retain, "learn_reg", tc, p / "train", hparams={"alpha": cfg.inject.lam})
        return exact_match_rate(model, tok, forget, cfg)

    key = {"inject": asdict(cfg.inject) | {"seed": None, "mask": ""}, "theta_r": theta_r.fingerprint, "data": data_fp}
    return cached(cfg.runs_dir, "inject_full", key, build, collective=True).metrics()["mean_es"]


def inject(cfg: Config, theta_r: ModelRef, seed: int | None = None) -> ModelRef:
    """theta_o: learn_reg on the forget set into V_tgt only (SPEC §7 step 2)."""
    from .masks.mask import Mask
    from .models.load import save_model
    from .train.loop import train

    seed = cfg.inject.seed if seed is None else seed
    mask_path = Path(cfg.inject.mask) if cfg.inject.mask else random_mask(cfg, theta_r, seed, cfg.inject.ratio)
    _, data_fp = data_source(cfg)
    target = cfg.inject.target_es_fraction * full_injection_es(cfg, theta_r)

    def build(p: Path) -> dict:
        model, tok = theta_r.load(cfg)
        mask = Mask.load(mask_path, expect_shape=_shape(model))
        if is_main_process():
            mask.save(p / "mask.safetensors")
        forget = load_rows(cfg, cfg.data.forget_split)
        retain = load_rows(cfg, retain_split(cfg))
        train(model, tok, forget, retain, "learn_reg", cfg.inject.train, p / "train", mask=mask.mask,
              hparams={"alpha": cfg.inject.lam})
        if is_main_process():
            save_model(model, tok, p / "model")
        em = exact_match_rate(model, tok, forget, cfg)
        return {"seed": seed, "forget_es": em["mean_es"], "exact_greedy": em["exact_greedy"],
                "target_es": target, "reached": em["mean_es"] >= target}

    key = {"inject": asdict(cfg.inject) | {"seed": seed}, "mask": sha256_file(mask_path),
           "theta_r": theta_r.fingerprint, "data": data_fp}
    run = cached(cfg.runs_dir, "inject", key, build, collective=True)
    return _ref_from_run(run)


def _shape(model):
    from .models.value_vectors import shape

    return shape(model)


# ----------------------------------------------------------------------------- evaluation


def evaluate(cfg: Config, model: ModelRef, reference: ModelRef | None = None) -> dict:
    """Metrics of one model (SPEC §2-3), cached; FQ against `reference` (theta_r) when given."""
    from .evaluate.tofu import evaluate_model

    _, data_fp = data_source(cfg)
    ref_tr = reference_truth_ratios(cfg, reference) if reference else None

    def build(p: Path) -> dict:
        m, tok = model.load(cfg)
        return evaluate_model(m, tok, eval_sets(cfg), cfg.eval, reference_truth_ratios=ref_tr)

    key = {"eval": _eval_key(cfg), "model": model.fingerprint, "data": data_fp,
           "reference": reference.fingerprint if reference else ""}
    return cached(cfg.runs_dir, "evaluate", key, build).metrics()


def _eval_key(cfg: Config) -> dict:
    # Trajectory-summary options do not change per-model metrics.
    e = asdict(cfg.eval)
    for k in ("reference", "curve", "envelope", "left_anchor", "mu95"):
        e.pop(k)
    return e | {"max_eval_rows": cfg.data.max_eval_rows, "forget_split": cfg.data.forget_split}


def reference_truth_ratios(cfg: Config, reference: ModelRef) -> list[float]:
    return evaluate(cfg, reference)["forget"]["truth_ratio_raw"]


# ----------------------------------------------------------------------------- unlearning


def unlearn(cfg: Config, model: ModelRef, mask_path: str | Path | None, reference: ModelRef,
            ucfg=None) -> Run:
    """Masked unlearning from `model` (theta_0); evaluates theta_0 and every checkpoint (SPEC §4)."""
    from .evaluate.tofu import evaluate_model
    from .evaluate.tradeoff import summarize_trajectory
    from .masks.mask import Mask
    from .train.loop import load_checkpoint, train

    ucfg = ucfg or method_config(cfg.unlearn, cfg.unlearn.method)
    _, data_fp = data_source(cfg)
    ref_tr = reference_truth_ratios(cfg, reference)
    m0 = evaluate(cfg, model, reference)

    def build(p: Path) -> dict:
        m, tok = model.load(cfg)
        mask = Mask.load(mask_path, expect_shape=_shape(m)).mask if mask_path else None
        forget = load_rows(cfg, cfg.data.forget_split)
        retain = load_rows(cfg, retain_split(cfg))
        hp = {k: getattr(ucfg, k) for k in ("gamma", "alpha", "beta", "delta") if getattr(ucfg, k) is not None}
        hp |= {"rmu_layer": ucfg.rmu_layer, "rmu_c": ucfg.rmu_c}
        res = train(m, tok, forget, retain, ucfg.method, ucfg.train, p / "train", mask=mask, hparams=hp,
                    idk=load_idk(cfg))
        sets = eval_sets(cfg)
        points = [_point(0, m0)]
        if cfg.eval.curve == "mix":
            # SPEC §4 option: theta(a) = (1 - a) theta_0 + a theta_K, a = 0.1 .. 1 (theta_0 is point 0).
            from .evaluate.tradeoff import mix_state_dicts

            sd0 = {k: v.clone() for k, v in model.load(cfg)[0].state_dict().items()}
            sdk = m.state_dict()  # train() left theta_K (merged) in `m`
            for j in range(1, 11):
                mk, _ = model.load(cfg)
                mk.load_state_dict(mix_state_dicts(sd0, sdk, j / 10))
                met = evaluate_model(mk, tok, sets, cfg.eval, reference_truth_ratios=ref_tr)
                points.append(_point(j, met) | {"mix": j / 10})
        else:
            for ck in res.checkpoints:
                done = Path(ck) / "metrics.json"
                if done.is_file():  # evaluated before an interruption: written atomically, reuse it
                    met = json.loads(done.read_text())
                else:
                    base, _ = model.load(cfg)
                    met = evaluate_model(load_checkpoint(base, ck), tok, sets, cfg.eval, reference_truth_ratios=ref_tr)
                    fault_point("evaluate_checkpoint")
                    if is_main_process():
                        write_json_atomic(done, met)
                points.append(_point(_step_of(ck), met))
        summ = summarize_trajectory(points, envelope=cfg.eval.envelope, left_anchor=cfg.eval.left_anchor,
                                    mode=cfg.eval.mu95)
        return {"method": ucfg.method, "mask": str(mask_path or ""), "trajectory": points,
                "aues": summ["aues"], "mu95": summ["mu95"], "mu95_not_reached": summ["mu95_not_reached"],
                "train_truncated": res.truncated}

    key = {"unlearn": asdict(ucfg), "eval": _eval_key(cfg) | {k: getattr(cfg.eval, k) for k in
                                                              ("curve", "envelope", "left_anchor", "mu95")},
           "model": model.fingerprint, "mask": sha256_file(mask_path) if mask_path else "",
           "reference": reference.fingerprint, "data": data_fp}
    return cached(cfg.runs_dir, "unlearn", key, build, collective=True)


def _step_of(ck) -> int:
    name = Path(ck).name
    return int(name.split("-")[-1]) if name.split("-")[-1].isdigit() else -1


def _point(step: int, met: dict) -> dict:
    return {"step": step, "FS": met["FS"], "RS": met["RS"], "MU": met["MU"], "log10_FQ": met.get("log10_FQ")}


# ----------------------------------------------------------------------------- CLI commands


def _print_json(title: str, obj) -> None:
    print(f"{title}\n{json.dumps(obj, indent=2, default=str)}")


def cmd_data_generate(cfg: Config) -> None:
    from .data.synthetic import write_world

    if not cfg.out:
        raise UserError("data generate needs out=DIR (the folder to write the TOFU-format files into)")
    out = write_world(cfg.out, **_data_key(cfg))
    print(f"wrote the synthetic author world ({cfg.data.n_authors} authors) to {out}")


def cmd_finetune(cfg: Config) -> None:
    ref = finetune(cfg)
    print(f"fine-tuned model: {ref.path}\nmetrics: {ref.run.path / 'metrics.json'}")
    _print_json("summary:", {k: v for k, v in ref.run.metrics().items() if k != "train_log"})


def cmd_inject(cfg: Config) -> None:
    theta_r = _model_arg(cfg) or finetune(cfg)
    ref = inject(cfg, theta_r)
    met = ref.run.metrics()
    print(f"theta_o: {ref.path}\nmask: {ref.run.path / 'mask.safetensors'}")
    print(f"forget ES {met['forget_es']:.3f} vs target {met['target_es']:.3f}: "
          f"{'reached' if met['reached'] else 'NOT reached'}")


def cmd_localize(cfg: Config) -> None:
    from .masks.mask import Mask

    model = _model_arg(cfg) or finetune_on(cfg, "full")
    path = localize(cfg, model)
    mask = Mask.load(path)
    out = path
    if cfg.out:
        out = Path(cfg.out)
        mask.save(out)
    summary = {"mask": str(out), "per_layer_counts": mask.per_layer_counts()}
    for other in cfg.localize.compare:
        o = Mask.load(other, expect_shape=tuple(mask.mask.shape))
        pr = mask.precision_recall(o)
        summary[f"vs {other}"] = {"jaccard": mask.jaccard(o), **pr}
    _print_json("localization:", summary)


def cmd_unlearn(cfg: Config) -> None:
    model = _model_arg(cfg)
    if model is None:
        raise UserError("unlearn needs model=PATH (e.g. theta_o from `loc-unlearn inject`)")
    theta_r = (ModelRef(cfg.eval.reference, f"model:{cfg.eval.reference}") if cfg.eval.reference
               else finetune(cfg))
    run = unlearn(cfg, model, cfg.unlearn.mask or None, theta_r)
    met = run.metrics()
    print(f"run: {run.path}")
    for pt in met["trajectory"]:
        print(f"  step {pt['step']:5d}  FS {pt['FS']:.3f}  RS {pt['RS']:.3f}  MU {pt['MU']:.3f}  "
              f"log10FQ {pt['log10_FQ'] if pt['log10_FQ'] is None else round(pt['log10_FQ'], 2)}")
    print(f"AUES {met['aues']:.3f}  MU95 {met['mu95']:.2f}{' (not reached)' if met['mu95_not_reached'] else ''}")


def cmd_evaluate(cfg: Config) -> None:
    from .evaluate.tofu import format_table

    model = _model_arg(cfg)
    if model is None:
        raise UserError("evaluate needs model=PATH")
    reference = ModelRef(cfg.eval.reference, f"model:{cfg.eval.reference}") if cfg.eval.reference else None
    met = evaluate(cfg, model, reference)
    if cfg.out:
        write_json_atomic(Path(cfg.out) / "metrics.json", met)
        print(f"metrics written to {Path(cfg.out) / 'metrics.json'}")
    print(format_table(met))


def _model_arg(cfg: Config) -> ModelRef | None:
    """model=PATH on the command line: a run's model folder or any HF folder / hub id."""
    if not cfg.input_model:
        return None
    p = Path(cfg.input_model)
    if (p / "manifest.json").is_file() and (p / "model").is_dir():
        p = p / "model"
    if (p.parent / "manifest.json").is_file():
        run = Run(p.parent, "model", {})
        run.verify()
        return ModelRef(str(p), run.fingerprint, run)
    if not p.exists() and (cfg.input_model.startswith((".", "/")) or cfg.input_model.count("/") != 1):
        raise UserError(f"model={cfg.input_model}: no such folder (expected a run directory, a model folder "
                        f"or a hub id like owner/name)")
    return ModelRef(str(p), f"model:{cfg.input_model}")

