"""Typed configs: the single source of truth for the Python API, the CLI and YAML files.

One top-level `Config` holds one section per stage. Every command takes the whole `Config` and uses
the sections it needs; a stage's run directory is hashed over exactly those sections (runs.py).
Resolution order (later wins): dataclass defaults < preset YAML (`preset=NAME`, files in
`loc_unlearn/presets/`) < `--config file.yaml` < `key=value` overrides (dotted: `unlearn.train.lr=1e-4`).
Unknown keys are errors that list the known ones; values are coerced to the field's type.
Then `Config.validate()` checks ranges, one `validate(where)` per section next to its fields, each rule
with one message (the `check_*` functions, which library code reuses as guards). Method names and their
hyperparameters (the open `params` mappings of unlearn and localize) are checked by the registries that
hold them, `plugins.check_methods(cfg)`, after `Config.plugins` are loaded: this package imports no layer.
Definitions are in docs/ (index docs/README.md); each field's docstring says what it controls (trl style).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from ..checks import (check_at_least, check_device_setting, check_file, check_fraction,  # noqa: F401  (re-exported)
                      check_positive)
from ..errors import ConfigError
from .coerce import _hints, apply_override, load_yaml, merge, to_dict  # noqa: F401  (re-exported)
from .sections import (REGIONS, DataConfig, EvalConfig, FinetuneConfig, InjectConfig, LocalizeConfig,  # noqa: F401
                       ModelConfig, TinyModelConfig, TrainConfig, UnlearnConfig, method_config)

PRESETS_DIR = Path(__file__).parent.parent / "presets"


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
    main_threads: int = 0
    """Torch threads of the study's own process, which builds the shared inputs (base model, theta_r) alone before
    any job runs and gathers the results after them (localization check, positive control, output fit); 0 =
    `threads`. Jobs run with `threads` in whichever process runs them, so the numbers do not depend on
    `workers`. The tiny preset gives this process 2 threads: nothing else runs beside it then."""
    workers: int = 1
    """`executor=local`: worker processes that run a wave's independent jobs at once, each with `threads` torch
    threads (studies/executor.py); 0 = one per available CPU core divided by `threads`. CPU only: with a GPU the
    jobs run one at a time in this process. Not part of the study's key: the numbers do not depend on it (each
    job computes the same cached runs in whichever process runs it; tests/test_workers.py)."""
    slurm_partition: str = ""
    """SLURM partition."""
    slurm_gpus: int = 1
    """GPUs per SLURM job."""
    slurm_time_min: int = 240
    """SLURM time limit per job (minutes)."""
    slurm_signal_delay_s: int = 120
    """Seconds before the time limit at which SLURM signals a job (SIGUSR2): it stops at the next training
    step with a checkpoint written and is requeued, so this must cover one step and one checkpoint save."""
    output_fit: bool = True
    """Also run the per-layer output-reproduction analysis (docs/studies.md#output-fit)."""
    scopes: list[str] = field(default_factory=lambda: ["global"])
    """Top-k scopes of the localization masks (localize.scope values): the controlled study's localization
    check runs every localizer in each; the localization benchmark labels non-global masks `NAME@SCOPE`."""
    layer_matched: bool = False
    """Localization benchmark: also run, for each attribution method, a random mask with the same
    per-layer counts (`random~METHOD`), separating "which layers" from "which value vectors"."""
    robustness: Literal["off", "reduced", "full"] = "off"
    """Robustness attacks (docs/attacks.md) on every unlearned model of a study, at its final checkpoint and at
    its MU95 checkpoint (studies/robustness.py): 'off'; 'reduced' = relearning for 0, 5, 20 steps on the
    forget_relearn half only, RTN at 4 and 8 bits (the tiny demo's setting: minutes on a CPU); 'full' =
    the `attack` section as configured (default schedule 0, 5, 10, 25, 50, both relearn variants, its bits)."""

    def validate(self, where: str = "study") -> None:
        check_at_least(f"{where}.seeds", self.seeds, 1)
        check_at_least(f"{where}.workers", self.workers, 0)
        check_at_least(f"{where}.main_threads", self.main_threads, 0)
        for scope in self.scopes:
            if scope not in ("global", "per_layer"):
                raise ConfigError(f"config key '{where}.scopes': expected 'global' or 'per_layer', got {scope!r}")


@dataclass
class AttackConfig:
    """Robustness attacks on an unlearned model (docs/attacks.md): `loc_unlearn.attacks`."""
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
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where every stage runs its models (training, evaluation, localization, output fit, attacks): 'auto' =
    'cuda' when torch.cuda.is_available(), else 'cpu'; 'cpu' or 'cuda' force it ('cuda' without a GPU is an
    error). Under `accelerate launch` / torchrun 'cuda' is each process's own GPU (LOCAL_RANK). Not part of
    any run key: where a model ran does not name a different result (metrics.json records the device and
    dtype each run used)."""
    threads: int = 0
    """Torch CPU threads of every process (torch.set_num_threads); 0 = torch's default (one per core). On CPU the
    float results can depend on it (how a reduction is split between threads), so a preset whose numbers must
    not depend on the machine's core count pins it (tiny: 1, with study.workers=0 to use the other cores).
    Part of a study's key, not of the stage runs' keys (like `device`: a run reused from another setting is
    a run from other kernels)."""
    input_model: str = ""
    """The model a command operates on (`model=` of evaluate/localize/inject/unlearn): a run directory,
    a model folder or a hub id. (`model.path` is the preset's base model instead.)"""
    out: str = ""
    """Output folder for commands that write one (data generate, localize, evaluate); empty = a run dir."""
    plugins: list[str] = field(default_factory=list)
    """Python files or modules defining methods (localizers, unlearning objectives, evaluation metrics) to use by
    name: `plugins=my_methods.py,my_pkg.methods`; `FILE.py:func` / `module:func` also call func() after the import
    (loc_unlearn.plugins). Not part of any run key: each method's source file content is."""
    checkpoints: list[str] = field(default_factory=list)
    """`trajectory`: HF-format checkpoint folders (or hub ids) in training order; `model=`/`init=` is point 0."""
    data: DataConfig = field(default_factory=DataConfig)
    """The forget/retain data (docs/data.md)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The base model theta_p."""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    """Fine-tuning all parameters: theta_r (docs/studies.md#step-1-retain-model)."""
    inject: InjectConfig = field(default_factory=InjectConfig)
    """Injecting the forget set into V_tgt: theta_o (docs/studies.md#step-2-injection)."""
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)
    """Masked unlearning (docs/objectives.md)."""
    localize: LocalizeConfig = field(default_factory=LocalizeConfig)
    """Localization methods (docs/localizers.md)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation and trajectory summaries (docs/metrics.md)."""
    study: StudyConfig = field(default_factory=StudyConfig)
    """The studies' seeds, methods and executor."""
    attack: AttackConfig = field(default_factory=AttackConfig)
    """Robustness attacks (docs/attacks.md)."""

    def validate(self) -> "Config":
        """Check every section's names and ranges before any work (ConfigError naming the key)."""
        # Literal coercion checks `device` from YAML and key=value; this also catches Config(device=...)
        # built in Python. Whether a GPU is present is checked where a model is placed (utils.place).
        check_device_setting(self.device)
        check_at_least("threads", self.threads, 0)
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate(f.name)
        return self


# ----------------------------------------------------------------------------- machinery


# ----------------------------------------------------------------------------- presets and resolution


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
