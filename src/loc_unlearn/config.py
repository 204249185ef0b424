"""Typed configs: the single source of truth for the Python API, the CLI and YAML files.

One top-level `Config` holds one section per stage. Every command takes the whole `Config` and uses
the sections it needs; a stage's run directory is hashed over exactly those sections (runs.py).
Resolution order (later wins): dataclass defaults < preset YAML (`preset=NAME`, files in
`loc_unlearn/presets/`) < `--config file.yaml` < `key=value` overrides (dotted: `unlearn.train.lr=1e-4`).
Unknown keys are errors that list the known ones; values are coerced to the field's type.
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
    train: TrainConfig = field(default_factory=TrainConfig)
    """Injection recipe."""


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


@dataclass
class LocalizeConfig:
    method: str = "random"
    """random | random_complement | activation | memflex | wagle | gradient (SPEC §6)."""
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
    layer_matched: bool = False
    """Localization benchmark: also run, for each attribution method, a random mask with the same
    per-layer counts (`random~METHOD`), separating "which layers" from "which value vectors"."""


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
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    inject: InjectConfig = field(default_factory=InjectConfig)
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)
    localize: LocalizeConfig = field(default_factory=LocalizeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    study: StudyConfig = field(default_factory=StudyConfig)


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
    """Resolve a Config: defaults < preset < config file < key=value overrides.

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
    return cfg


def dump_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
