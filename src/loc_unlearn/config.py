"""Typed configs: the single source of truth for the Python API, the CLI and YAML files.

One top-level `Config` holds one section per stage. Every command takes the whole `Config` and uses
the sections it needs; a stage's run directory is hashed over exactly those sections (runs.py).
Resolution order (later wins): dataclass defaults < preset YAML (`preset=NAME`, files in
`loc_unlearn/presets/`) < `--config file.yaml` < `key=value` overrides (dotted: `unlearn.train.lr=1e-4`).
Unknown keys are errors that list the known ones; values are coerced to the field's type.
Then `Config.validate()` checks names and ranges, one `validate(where)` per section next to its
fields, each rule with one message (the `check_*` functions, which library code reuses as guards).
Definitions are in SPEC.md; each field's docstring says what it controls (trl style).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .errors import ConfigError

PRESETS_DIR = Path(__file__).parent / "presets"


# ----------------------------------------------------------------------------- rules (one message each)


def check_fraction(key: str, value) -> float:
    """A fraction of value vectors: a number in (0, 1] (mask ratios)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(f"{key}={value!r}: expected a fraction of value vectors in (0, 1]")
    return float(value)


def check_positive(key: str, value) -> None:
    if not value > 0:
        raise ConfigError(f"{key}={value!r}: expected a number > 0")


def check_at_least(key: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{key}={value!r}: expected an integer >= {low}")


def check_file(key: str, path: str) -> None:
    """An optional input file (masks): empty, or an existing file."""
    if path and not Path(path).is_file():
        what = "is a folder" if Path(path).is_dir() else "does not exist"
        raise ConfigError(f"{key}={path}: {what}; expected a mask file (.safetensors, e.g. the mask.safetensors "
                          f"of a localize or inject run)")


def check_name(key: str, name: str, kind: str) -> None:
    """`name` is registered as a `kind` ("unlearning method" or "localization method")."""
    known = _registry(kind)
    if name not in known:
        raise ConfigError(f"{key}: unknown {kind} {name!r}; known: {', '.join(sorted(known))}")


def _registry(kind: str):
    # Imported here: the registries live in modules that import this one (an import cycle otherwise)
    # and pull in torch, which `loc-unlearn --help` and YAML handling do not need.
    if kind == "unlearning method":
        from .train.objectives import OBJECTIVES

        return OBJECTIVES
    from .masks.localize import LOCALIZERS

    return LOCALIZERS


@dataclass
class DataConfig:
    source: str = "synthetic"
    """'synthetic' (the offline author world, generated into runs_dir), a local folder of TOFU-named
    JSON/JSONL files, or a hub dataset id such as 'locuslab/TOFU' (needs network)."""
    n_authors: int = 20
    """Synthetic world: number of fictitious authors (TOFU has 200)."""
    qa_per_author: int = 20
    """Synthetic world: QA pairs per author (TOFU has 20)."""
    seed: int = 0
    """Synthetic world: generator seed (same seed, byte-identical files)."""
    forget_split: str = "forget10"
    """Forget split: forget01 / forget05 / forget10 (last 1/5/10% of authors)."""
    retain_split: str = ""
    """Retain split; empty = the complement of forget_split (retain99/95/90)."""
    max_eval_rows: int = 0
    """Truncate every eval set to this many rows (0 = use whole sets, SPEC §3)."""
    n_real_authors: int = 100
    """Synthetic world: rows of real_authors_perturbed (TOFU has 100); pretrain covers their facts."""
    n_world_facts: int = 117
    """Synthetic world: rows of world_facts_perturbed (TOFU has 117); pretrain covers these facts."""

    def validate(self, where: str = "data") -> None:
        check_at_least(f"{where}.n_authors", self.n_authors, 2)  # at least one forget and one retain author
        for name in ("qa_per_author", "n_real_authors", "n_world_facts"):
            check_at_least(f"{where}.{name}", getattr(self, name), 1)
        check_at_least(f"{where}.max_eval_rows", self.max_eval_rows, 0)


@dataclass
class TinyModelConfig:
    n_layers: int = 4
    """Decoder layers of the tiny Llama."""
    hidden: int = 128
    """Hidden size d."""
    d_ff: int = 512
    """MLP width (number of value vectors per layer)."""
    n_heads: int = 4
    """Attention heads."""
    vocab_size: int = 2048
    """BPE vocabulary trained on the synthetic world."""
    max_positions: int = 256
    """Maximum sequence length."""
    pretrain_epochs: float = 30.0
    """Epochs of 'pretraining' on the world's general facts (so Model Utility has something to keep)."""
    pretrain_lr: float = 3e-3
    """Learning rate of that pretraining."""
    seed: int = 0
    """Initialization seed."""


@dataclass
class ModelConfig:
    preset: str = "tiny"
    """Base model preset: tiny | smol | paper-llama3.1-8b | paper-olmo2-7b (see presets/)."""
    path: str = ""
    """Hub id or local folder of a model; empty = the preset's base model (theta_p)."""
    gguf_file: str = ""
    """GGUF file name inside `path` (loaded dequantized and cached as safetensors)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights dtype for loading."""
    trust_remote_code: bool = False
    """Allow model code from the hub. Off unless you set it."""
    allow_pickle: bool = False
    """Allow pickle weight files (pytorch_model.bin, *.pt, *.pth, *.ckpt, *.pkl) when a model has no
    safetensors. Unpickling can run code, so they are refused unless you set this for files you trust."""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    """Architecture of the tiny preset."""


@dataclass
class TrainConfig:
    lr: float = 1e-5
    """Peak learning rate (AdamW)."""
    epochs: float = 5.0
    """Training length in epochs over the (forget) data; fractions allowed."""
    batch_size: int = 32
    """Global batch size (examples per optimizer step, over all processes and accumulation)."""
    micro_batch_size: int = 0
    """Examples per forward pass per process; 0 = batch_size / num_processes. Accumulation is
    derived, and results do not depend on this split (loss is normalized over the global batch)."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay; applied only to trainable (masked) parameters."""
    warmup_epochs: float = 1.0
    """Linear warmup length in epochs, then linear decay to 0."""
    max_length: int = 256
    """Truncate prompt+answer to this many tokens."""
    checkpoint_every: float = 0.25
    """Save a checkpoint every this many epochs (0 = only the final one). These form trajectories."""
    seed: int = 0
    """Data order / pairing seed."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """accelerate mixed precision (bf16 on GPUs)."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0 = no limit)."""
    grad_clip: float = 1.0
    """Max gradient norm (0 = off)."""

    def validate(self, where: str = "train") -> None:
        check_positive(f"{where}.lr", self.lr)
        check_positive(f"{where}.epochs", self.epochs)
        check_at_least(f"{where}.batch_size", self.batch_size, 1)
        check_at_least(f"{where}.micro_batch_size", self.micro_batch_size, 0)


@dataclass
class FinetuneConfig:
    split: str = "retain90"
    """Split to fine-tune on: 'retain90' (theta_r), 'full', ...; synthetic pretraining uses 'pretrain'."""
    replay_split: str = ""
    """Split mixed into fine-tuning to keep general knowledge (tiny preset: 'pretrain'). A 1M-parameter
    model forgets its pretraining facts entirely when fine-tuned on authors alone, which would leave
    Model Utility nothing to measure; real LLMs do not need this (empty = off, SPEC §7 as written)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Recipe (SPEC §7 step 1: lr 1e-5, 5 epochs, batch 32, wd 0.01, warmup 1 epoch; presets scale it)."""

    def validate(self, where: str = "finetune") -> None:
        self.train.validate(f"{where}.train")


@dataclass
class InjectConfig:
    ratio: float = 0.1
    """Fraction of value vectors in V_tgt."""
    mask: str = ""
    """Path of a mask to inject into; empty = a random mask of `ratio` with `seed`."""
    seed: int = 0
    """Seed of the random target region V_tgt."""
    lam: float = 1.0
    """lambda of learn_reg: NLL(forget) + lambda NLL(retain) (SPEC §5)."""
    full_lr: float = 0.0
    """Learning rate of the all-parameter reference injection that sets the target (0 = train.lr): the
    masked recipe's rate can be too large for all parameters."""
    target_es_fraction: float = 0.9
    """Injection must reach this fraction of the forget ES that full fine-tuning reaches (SPEC §7)."""
    max_norm_ratio: float = 0.0
    """After every step, scale each V_tgt value vector down to at most this many times its theta_r norm
    (0 = off; train/norm_cap.py), so V_tgt cannot be found by norm alone."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Injection recipe."""

    def validate(self, where: str = "inject") -> None:
        check_fraction(f"{where}.ratio", self.ratio)
        if self.ratio > 0.5:
            # Checked here, not after injection: the controlled study's Random region is disjoint from
            # V_tgt and of the same size, which only fits when V_tgt is at most half of the value vectors.
            raise ConfigError(f"{where}.ratio={self.ratio!r}: expected at most 0.5 (the Random region, disjoint "
                              f"from V_tgt and of the same size, must fit in its complement)")
        check_file(f"{where}.mask", self.mask)
        if self.max_norm_ratio < 0:
            raise ConfigError(f"config key '{where}.max_norm_ratio': expected >= 0 (0 = off), got {self.max_norm_ratio}")
        self.train.validate(f"{where}.train")


@dataclass
class UnlearnConfig:
    method: str = "npo"
    """Objective: ga | graddiff | wga | npo | simnpo | dpo | rmu (SPEC §5)."""
    mask: str = ""
    """Mask file (safetensors); empty = all parameters trainable (no localization)."""
    gamma: Optional[float] = None
    """Weight of the forget loss; None = the method's default (SPEC §5)."""
    alpha: Optional[float] = None
    """Weight of the retain loss; None = the method's default."""
    beta: Optional[float] = None
    """beta of WGA/NPO/SimNPO/DPO; None = the method's default."""
    delta: Optional[float] = None
    """SimNPO margin; None = 0."""
    rmu_layer: int = -1
    """RMU steering layer; -1 = 7 scaled to the model's depth (round(7/32 * L))."""
    rmu_c: float = 6.5
    """RMU steering coefficient c."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Unlearning recipe; checkpoints every `checkpoint_every` epochs form the trajectory."""
    per_method: dict = field(default_factory=dict)
    """Per-method overrides of this section used by the studies, e.g. `{rmu: {train: {lr: 0.3}}}`.
    Methods need different step sizes (RMU's hidden-state loss vs NPO's log-sigmoid); Oracle and
    Random always share them, which is all the causal test requires (SPEC §7 step 3)."""

    def validate(self, where: str = "unlearn") -> None:
        check_name(f"{where}.method", self.method, "unlearning method")
        check_file(f"{where}.mask", self.mask)
        self.train.validate(f"{where}.train")
        for name in self.per_method:
            check_name(f"{where}.per_method", name, "unlearning method")
            method_config(self, name).train.validate(f"{where}.per_method.{name}.train")


@dataclass
class LocalizeConfig:
    method: str = "random"
    """random | random_complement | random_layer_matched | activation | memflex | wagle | gradient | norm (SPEC §6)."""
    ratio: float = 0.1
    """Fraction of value vectors selected."""
    scope: Literal["global", "per_layer"] = "global"
    """Top-k over all layers, or the same fraction in every layer."""
    seed: int = 0
    """Seed (random methods, memflex corruption)."""
    source_mask: str = ""
    """random_complement: the mask whose complement is sampled."""
    batch_size: int = 8
    """Examples per forward/backward pass."""
    memflex_threshold: float = 0.92
    """MemFlex: candidates have cos(g_forget, g_retain) below this."""
    memflex_copies: int = 3
    """MemFlex: corrupted copies per example."""
    wagle_gamma: float = 1e-6
    """WAGLE: gamma of s = |(theta - g_retain / gamma) * g_forget|."""
    max_length: int = 256
    """Truncate prompt+answer to this many tokens when scoring."""
    compare: list[str] = field(default_factory=list)
    """Masks to report overlap / precision / recall against."""
    reference: str = ""
    """norm: a reference model folder (e.g. theta_r); scores become ||v - v_ref||_2 instead of ||v||_2."""

    def validate(self, where: str = "localize") -> None:
        check_name(f"{where}.method", self.method, "localization method")
        check_fraction(f"{where}.ratio", self.ratio)
        check_at_least(f"{where}.batch_size", self.batch_size, 1)


@dataclass
class EvalConfig:
    batch_size: int = 16
    """Examples per forward pass / generation batch."""
    max_new_tokens: int = 200
    """Greedy generation length for ROUGE-L."""
    es_floor: Literal["none", "ou"] = "none"
    """'ou' reproduces open-unlearning's 1/T floor of ES (SPEC §2)."""
    rouge: bool = True
    """Compute ROUGE-L (needs generation; the slow part of evaluation)."""
    reference: str = ""
    """Reference (retain) model for Forget Quality: a model folder or a metrics.json with truth ratios."""
    curve: Literal["checkpoints", "mix"] = "checkpoints"
    """Trajectory: saved checkpoints, or model mixing theta(a) (SPEC §4)."""
    envelope: bool = True
    """AUES: keep only the Pareto envelope."""
    left_anchor: bool = True
    """AUES: prepend (0, RS of the first point)."""
    mu95: Literal["first", "best"] = "first"
    """MU95: first crossing (interpolated) or best log10 FQ above 0.95 MU0."""
    full_at: Literal["all", "ends"] = "all"
    """Trajectory points that get the full evaluation (FQ, the MU sets, ROUGE when on): 'all', or 'ends' =
    theta_0 and the last point only; the points between get forget/retain ES alone (FS, RS: AUES is the
    same), and MU95 uses the points that have MU (the run's `mu95_note` says so)."""

    def validate(self, where: str = "eval") -> None:
        check_at_least(f"{where}.batch_size", self.batch_size, 1)


REGIONS = ("oracle", "random")
"""The controlled study's two masks per seed (SPEC §7): V_tgt, the region the forget set was injected
into, and a disjoint random region of the same size (`stages.prepare_seed`)."""


@dataclass
class StudyConfig:
    seeds: int = 3
    """Number of seeds (target regions) in the controlled study."""
    methods: list[str] = field(default_factory=lambda: ["wga", "npo", "dpo", "rmu"])
    """Unlearning methods."""
    localizers: list[str] = field(default_factory=lambda: ["random", "activation", "memflex", "wagle", "gradient"])
    """Localization methods (controlled study's localization check; localization benchmark)."""
    executor: Literal["local", "slurm", "debug"] = "local"
    """Run jobs in process, on SLURM through submitit, or with submitit's debug executor."""
    slurm_partition: str = ""
    """SLURM partition."""
    slurm_gpus: int = 1
    """GPUs per SLURM job."""
    slurm_time_min: int = 240
    """SLURM time limit per job (minutes)."""
    output_fit: bool = True
    """Also run the per-layer output-reproduction analysis (SPEC §9)."""
    scopes: list[str] = field(default_factory=lambda: ["global"])
    """Top-k scopes of the localization masks (localize.scope values): the controlled study's localization
    check runs every localizer in each; the localization benchmark labels non-global masks `NAME@SCOPE`."""
    layer_matched: bool = False
    """Localization benchmark: also run, for each attribution method, a random mask with the same
    per-layer counts (`random~METHOD`), separating "which layers" from "which value vectors"."""
    robustness: Literal["off", "reduced", "full"] = "off"
    """Robustness attacks (SPEC §10) on every unlearned model of a study, at its final checkpoint and at
    its MU95 checkpoint (studies/robustness.py): 'off'; 'reduced' = relearning for 0, 5, 20 steps on the
    forget_relearn half only, RTN at 4 and 8 bits (the tiny demo's setting: minutes on a CPU); 'full' =
    the `attack` section as configured (default schedule 0, 5, 10, 25, 50, both relearn variants, its bits)."""

    def validate(self, where: str = "study") -> None:
        check_at_least(f"{where}.seeds", self.seeds, 1)
        for name in self.methods:
            check_name(f"{where}.methods", name, "unlearning method")
        for name in self.localizers:
            check_name(f"{where}.localizers", name, "localization method")
        for scope in self.scopes:
            if scope not in ("global", "per_layer"):
                raise ConfigError(f"config key '{where}.scopes': expected 'global' or 'per_layer', got {scope!r}")


@dataclass
class AttackConfig:
    """Robustness attacks on an unlearned model (SPEC §10): `loc_unlearn.attacks`."""
    schedule: list[int] = field(default_factory=lambda: [0, 5, 10, 25, 50])
    """Relearning: measure after these many optimizer steps of ONE run of max(schedule) steps (0 = the
    unlearned model itself, always measured)."""
    relearn_data: list[str] = field(default_factory=lambda: ["forget_relearn", "retain"])
    """Relearning variants: 'forget_relearn' (the relearn half of each forget author's questions) and/or
    'retain' (benign: as many retain rows)."""
    lr: float = 0.0
    """Relearning peak learning rate, all parameters (0 = finetune.train.lr, the preset's all-parameter rate)."""
    batch_size: int = 0
    """Relearning batch size (0 = finetune.train.batch_size)."""
    weight_decay: float = 0.0
    """Relearning AdamW weight decay."""
    warmup_steps: int = 0
    """Relearning linear warmup steps (then linear decay to 0 at max(schedule))."""
    max_length: int = 0
    """Relearning: truncate prompt+answer to this many tokens (0 = finetune.train.max_length)."""
    seed: int = 0
    """Seed of the probe/relearn split, the retain sample and the data order."""
    qa_per_author: int = 0
    """Questions per forget author for the split (0 = data.qa_per_author for the synthetic world, 20 (TOFU)
    for other sources)."""
    theta_o: str = ""
    """theta_o (model folder / run dir): ES_o of R(k) for relearning; a quantized reference for quantization."""
    theta_r: str = ""
    """theta_r (model folder / run dir): a quantized reference for the quantization attack."""
    bits: list[int] = field(default_factory=lambda: [4, 8])
    """Quantization: RTN bit widths."""
    group_size: int = 128
    """Quantization: consecutive input weights sharing one scale (a shorter last group if it does not divide)."""
    symmetric: bool = True
    """Quantization: symmetric (scale = max|w| / (2^(b-1)-1)) or asymmetric (min/max with a zero point)."""
    include: list[str] = field(default_factory=lambda: ["layers"])
    """Quantization: which weights: 'layers' (decoder linear weights), 'lm_head', 'embed'."""
    nf4: bool = False
    """Quantization: also NF4 through bitsandbytes (needs a CUDA device)."""
    keep_checkpoints: bool = False
    """Relearning: keep the attack's training checkpoints (full models) instead of deleting them."""


@dataclass
class Config:
    preset: str = ""
    """Name of the preset YAML applied before everything else (recorded for reference)."""
    runs_dir: str = "runs"
    """Where run directories, caches and reports go."""
    input_model: str = ""
    """The model a command operates on (`model=` of evaluate/localize/inject/unlearn): a run directory,
    a model folder or a hub id. (`model.path` is the preset's base model instead.)"""
    out: str = ""
    """Output folder for commands that write one (data generate, localize, evaluate); empty = a run dir."""
    checkpoints: list[str] = field(default_factory=list)
    """`trajectory`: HF-format checkpoint folders (or hub ids) in training order; `model=`/`init=` is point 0."""
    data: DataConfig = field(default_factory=DataConfig)
    """The forget/retain data (SPEC §3)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The base model theta_p."""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    """Fine-tuning all parameters: theta_r (SPEC §7 step 1)."""
    inject: InjectConfig = field(default_factory=InjectConfig)
    """Injecting the forget set into V_tgt: theta_o (SPEC §7 step 2)."""
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)
    """Masked unlearning (SPEC §4-5)."""
    localize: LocalizeConfig = field(default_factory=LocalizeConfig)
    """Localization methods (SPEC §6)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation and trajectory summaries (SPEC §2-4)."""
    study: StudyConfig = field(default_factory=StudyConfig)
    """The studies' seeds, methods and executor."""
    attack: AttackConfig = field(default_factory=AttackConfig)
    """Robustness attacks (SPEC §10)."""

    def validate(self) -> "Config":
        """Check every section's names and ranges before any work (ConfigError naming the key)."""
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate(f.name)
        return self


# ----------------------------------------------------------------------------- machinery


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp, where: str):
    """Coerce a YAML/CLI value to type `tp`; raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is Literal:
        if value is False and "off" in args:  # YAML 1.1 reads a bare `off` as false (study.robustness=off)
            value = "off"
        if value not in args:
            raise ConfigError(f"config key '{where}': expected one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""] if value.strip() not in ("", "[]") else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{where}': expected a list, got {value!r}")
        return [_coerce(v, args[0] if args else str, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{where}': expected a mapping, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{where}': expected a mapping, got {value!r}")
        return merge(tp(), value, where)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes", "on"):
                return True
            if str(value).lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, bool):
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            return "" if value is None else str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key '{where}': expected {tp.__name__}, got {value!r}") from None
    return value


def merge(cfg, updates: dict, prefix: str = ""):
    """Return `cfg` updated in place from a nested dict; unknown keys raise ConfigError."""
    hints = _hints(type(cfg))
    for key, value in (updates or {}).items():
        where = f"{prefix}.{key}" if prefix else key
        if key not in hints:
            known = ", ".join(f.name for f in dataclasses.fields(cfg))
            raise ConfigError(f"unknown config key '{where}'; known keys here: {known}")
        tp = hints[key]
        if (tp is dict or typing.get_origin(tp) is dict) and isinstance(value, dict):
            # Mappings merge key by key, so `unlearn.per_method.rmu.train.lr=0.3` adds to the preset's.
            setattr(cfg, key, _merge_dicts(getattr(cfg, key), value))
        elif dataclasses.is_dataclass(tp) and isinstance(value, dict):
            merge(getattr(cfg, key), value, where)
        else:
            setattr(cfg, key, _coerce(value, tp, where))
    return cfg


def _merge_dicts(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def method_config(ucfg: "UnlearnConfig", method: str) -> "UnlearnConfig":
    """`ucfg` for `method` with its `per_method` overrides applied (validated like any config)."""
    out = dataclasses.replace(ucfg, method=method, train=dataclasses.replace(ucfg.train), per_method={})
    return merge(out, ucfg.per_method.get(method, {}), f"unlearn.per_method.{method}")


def _parse_value(text: str):
    """CLI values: YAML scalars/lists (so 1e-4, true, [a,b] work), strings otherwise."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_override(cfg, key: str, text: str):
    parts = key.split(".")
    nested: dict = {}
    cur = nested
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    value = _parse_value(text)
    # Keep strings for str fields even when YAML parses them as numbers (e.g. path=123).
    cur[parts[-1]] = text if _field_type(cfg, parts) is str else value
    return merge(cfg, nested)


def _field_type(cfg, parts):
    obj = type(cfg)
    tp = None
    for p in parts:
        if not dataclasses.is_dataclass(obj):
            return None
        tp = _hints(obj).get(p)
        if tp is None:
            return None
        obj = tp
    return tp


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    return data


def known_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_dict(name: str) -> dict:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(known_presets())}")
    return load_yaml(path)


def build_config(preset: str | None = None, config_file: str | None = None,
                 overrides: list[str] | tuple[str, ...] = (), aliases: dict[str, str] | None = None) -> Config:
    """Resolve and validate a Config: defaults < preset < config file < key=value overrides.

    `aliases` maps short CLI keys of a command (e.g. `method`) to dotted keys (`unlearn.method`).
    """
    aliases = aliases or {}
    pairs = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        pairs.append((aliases.get(k.strip(), k.strip()), v))
    # A preset given on the command line wins over one named in the file.
    file_dict = load_yaml(config_file) if config_file else {}
    for k, v in pairs:
        if k == "preset":
            preset = v
    preset = preset or file_dict.get("preset") or "tiny"
    cfg = Config()
    merge(cfg, preset_dict(preset))
    cfg.preset = preset
    merge(cfg, {k: v for k, v in file_dict.items() if k != "preset"})
    for k, v in pairs:
        if k != "preset":
            apply_override(cfg, k, v)
    return cfg.validate()


def dump_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
