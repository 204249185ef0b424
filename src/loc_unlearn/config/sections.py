"""The stage sections of `Config` (data, model, finetune, inject, unlearn, localize, eval), each with
its fields' docstrings and a `validate(where)` next to them (the docs/ entry cited per field).

Method names and hyperparameters are not checked here: this package imports none of the layers it
configures. Each registry checks its own names (`plugins.check_methods`, called before any work), and a
method's hyperparameters live in its registration, set through the section's open `params` mapping."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from ..checks import check_at_least, check_file, check_fraction, check_positive
from ..errors import ConfigError
from .coerce import merge


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
    """Truncate every eval set to this many rows (0 = use whole sets, docs/data.md#evaluation-sets)."""
    n_real_authors: int = 100
    """Synthetic world: rows of real_authors_perturbed (TOFU has 100); pretrain covers their facts."""
    n_world_facts: int = 117
    """Synthetic world: rows of world_facts_perturbed (TOFU has 117); pretrain covers these facts."""
    utility_sets: Literal["auto", "world", "general"] = "auto"
    """Model Utility's two knowledge sets (docs/data.md#evaluation-sets): 'world' = the data's real_authors and
    world_facts sets; 'general' = the project's general-knowledge sets (general_people, general_world: real
    facts a small instruction model knows); 'auto' = general with synthetic data and a model other than the
    tiny preset (a real model knows nothing of the synthetic world, so its MU there would be 0), else world
    (a TOFU folder or hub id keeps TOFU's own sets)."""

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
    arch: dict = field(default_factory=dict)
    """Architecture numbers of the base model, as transformers config keys (model_type, hidden_size,
    intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads, vocab_size,
    tie_word_embeddings, ...), read only by `loc-unlearn plan` so a hub model is planned without a download;
    empty = read the model folder's config.json (tiny: model.tiny; smol: its GGUF). It describes model.path
    and is in no run key (the paper presets carry it)."""


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
    Model Utility nothing to measure; real LLMs do not need this (empty = off, as in docs/studies.md#step-1-retain-model)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Recipe (docs/studies.md#step-1-retain-model: lr 1e-5, 5 epochs, batch 32, wd 0.01, warmup 1 epoch; presets scale it)."""

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
    """lambda of learn_reg: NLL(forget) + lambda NLL(retain) (docs/objectives.md#injection-loss-learn_reg)."""
    full_lr: float = 0.0
    """Learning rate of the all-parameter reference injection that sets the target (0 = train.lr): the
    masked recipe's rate can be too large for all parameters."""
    target_es_fraction: float = 0.9
    """Injection must reach this fraction of the forget ES that full fine-tuning reaches (docs/studies.md#step-2-injection)."""
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
    """Objective: ga | graddiff | wga | npo | simnpo | dpo | rmu (docs/objectives.md), or a plug-in's name."""
    mask: str = ""
    """Mask file (safetensors); empty = all parameters trainable (no localization)."""
    params: dict = field(default_factory=dict)
    """Hyperparameters of the unlearning methods, set by name as `unlearn.beta=0.2` (or `unlearn.params.beta=0.2`).
    Each method declares its own (gamma, alpha, beta, delta, rmu_layer, rmu_c, a plug-in's); unset ones keep
    the method's default."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Unlearning recipe; checkpoints every `checkpoint_every` epochs form the trajectory."""
    per_method: dict = field(default_factory=dict)
    """Per-method overrides of this section used by the studies, e.g. `{rmu: {train: {lr: 0.3}, rmu_c: 5.0}}`
    (a method's own hyperparameters land in its `params`).
    Methods need different step sizes (RMU's hidden-state loss vs NPO's log-sigmoid); Oracle and
    Random always share them, which is all the causal test requires (docs/studies.md#step-3-oracle-and-random)."""

    def validate(self, where: str = "unlearn") -> None:
        check_file(f"{where}.mask", self.mask)
        self.train.validate(f"{where}.train")
        for name in self.per_method:
            method_config(self, name).train.validate(f"{where}.per_method.{name}.train")


@dataclass
class LocalizeConfig:
    method: str = "random"
    """random | random_complement | random_layer_matched | activation | memflex | wagle | gradient | norm (docs/localizers.md),
    or a plug-in's name."""
    ratio: float = 0.1
    """Fraction of value vectors selected."""
    scope: Literal["global", "per_layer"] = "global"
    """Top-k over all layers, or the same fraction in every layer."""
    seed: int = 0
    """Seed (random methods, memflex corruption)."""
    source_mask: str = ""
    """The source mask of the methods that need one: random_complement samples its complement,
    random_layer_matched copies its per-layer counts."""
    batch_size: int = 8
    """Examples per forward/backward pass."""
    params: dict = field(default_factory=dict)
    """Hyperparameters of the localization methods, set by name as `localize.memflex_threshold=0.9` (or
    `localize.params.memflex_threshold=0.9`). Each method declares its own (memflex_threshold, memflex_copies,
    wagle_gamma, a plug-in's); unset ones keep the method's default."""
    max_length: int = 256
    """Truncate prompt+answer to this many tokens when scoring."""
    compare: list[str] = field(default_factory=list)
    """Masks to report overlap / precision / recall against."""
    reference: str = ""
    """norm: a reference model folder (e.g. theta_r); scores become ||v - v_ref||_2 instead of ||v||_2."""

    def validate(self, where: str = "localize") -> None:
        check_fraction(f"{where}.ratio", self.ratio)
        check_at_least(f"{where}.batch_size", self.batch_size, 1)


@dataclass
class EvalConfig:
    batch_size: int = 16
    """Examples per forward pass / generation batch."""
    max_new_tokens: int = 200
    """Greedy generation length for ROUGE-L."""
    es_floor: Literal["none", "ou"] = "none"
    """'ou' reproduces open-unlearning's 1/T floor of ES (docs/metrics.md#extraction-strength-es)."""
    rouge: bool = True
    """Compute ROUGE-L (needs generation; the slow part of evaluation)."""
    reference: str = ""
    """Reference (retain) model for Forget Quality: a model folder or a metrics.json with truth ratios."""
    curve: Literal["checkpoints", "mix"] = "checkpoints"
    """Trajectory: saved checkpoints, or model mixing theta(a) (docs/metrics.md#mix-curve)."""
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
    metrics: list[str] = field(default_factory=list)
    """Extra metrics (registered ones, plug-ins included) computed for every fully evaluated model and
    reported under `metrics` (not at ES-only trajectory points); empty = none."""

    def validate(self, where: str = "eval") -> None:
        check_at_least(f"{where}.batch_size", self.batch_size, 1)


REGIONS = ("oracle", "random")
"""The controlled study's two masks per seed (docs/studies.md#step-3-oracle-and-random): V_tgt, the region the forget set was injected
into, and a disjoint random region of the same size (`stages.prepare_seed`)."""


def method_config(ucfg: "UnlearnConfig", method: str) -> "UnlearnConfig":
    """`ucfg` for `method` with its `per_method` overrides applied (validated like any config)."""
    out = dataclasses.replace(ucfg, method=method, train=dataclasses.replace(ucfg.train), params=dict(ucfg.params),
                              per_method={})
    return merge(out, ucfg.per_method.get(method, {}), f"unlearn.per_method.{method}")
