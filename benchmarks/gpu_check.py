"""One prepared GPU check (issues 13, 14, 20): run `bash benchmarks/gpu_check.sh` on one GPU; <= 8 minutes on an
H200. It ends with ONE table (section | case | measured | plan / reference | result) over four sections:

  (a) step   the masked unlearning step at Llama-3.1-8B shape (32 layers, hidden 4096, d_ff 14336, 32 heads,
             8 KV heads, vocab 128256), random bf16 weights built on the GPU (no download), micro batch 4 x 512
             tokens, bf16 autocast, AdamW: step time and peak GPU memory of
               ours      MaskedDelta, 10% value-vector mask (registered MaskedDownProj modules; deltas only)
               wdown_gm  (ii) all of W_down trainable, gradient * mask
               all_gm    (iii) every parameter trainable, element-wise gradient masks ("does not fit" on OOM)
             next to `loc-unlearn plan`'s per-GPU total for the same case (plan.train_row at the same micro
             batch and length, no engine, 1 GPU, one forward per step: masked unlearning for `ours`, all
             parameters for `all_gm`; the plan has no W_down-only stage) -- and the README's claim "8B masked
             unlearning on one 80 GB GPU". The variants are benchmarks/masked_step.py's, one fresh process each.
  (b) eval   evaluation at the same shape: evaluate/token_metrics.token_metrics over synthetic QA rows (a
             word-level tokenizer built here, eval batch 32) against a bare `torch.no_grad()` forward loop over
             the same padded batches (length_batches + collate, as token_metrics builds them): both times, their
             ratio (evaluation must run on the GPU without a big overhead), peak memory next to the plan's
             `evaluate` row. One process.
  (c) demo   `loc-unlearn demo` shortened (DEMO_SHORT: tiny preset, 10 authors, 2 seeds, no attacks, bf16) with
             device=auto, and every stage's recorded device and dtype (runs/<stage>/<hash>/metrics.json): on a
             GPU every stage that runs a model must say cuda. Beside it the same demo with device=cpu (its CPU
             twin, same commit and config); the two Oracle-vs-Random tables side by side.
  (d) fsdp   masked unlearning (npo) under FSDP2, `accelerate launch --config_file configs/accelerate/fsdp.yaml
             --num_processes 1`, against the same run without a launcher (theta_o from one `loc-unlearn inject`):
             the engine each run recorded (its checkpoints' trainer_state.json), max |difference| of the final
             deltas and of the trajectory's FS/RS/MU. In float32 (judged: equal within FSDP_REL_TOL) and in bf16
             as the paper presets train (reported). The stages' recorded devices are listed as in (c).

Every section runs in its own process(es) with its own time limit (--step-limit per variant, --eval-limit,
--demo-limit, --fsdp-limit; all within --budget-s), so one failure or timeout loses only itself: (a) and (b)
run alone (clean timings), then (c) and (d) side by side. The script ends with the Markdown summary block for
benchmarks/RESULTS.md (the one table, then each section's notes), also written to --out (default $OUT, else
runs/gpu-check) with results.json and one log per section.

`--cpu` is the dry run the test suite uses (tests/test_gpu_check.py, ~30-40 s on 1-2 cores): the same code on
the CPU with tiny shapes. (a) and (b) run with TINY_SHAPE; (c) is skipped with a line saying so (its commands
are built and its overrides validated; `--cpu --sections demo` runs it on the CPU in about a minute); (d) runs
with configs/accelerate/cpu_fsdp2_2proc.yaml (FSDP2 over 2 gloo processes, ACCELERATE_USE_CPU=true), a
smaller tiny model and float32 only. On the CPU, peak memory is the process's peak RSS (interpreter and
libraries included), not comparable with the plan.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # masked_step (the CPU benchmark) is reused, not copied
if str(ROOT / "src") not in sys.path:
    sys.path.insert(1, str(ROOT / "src"))  # loc_unlearn without an install (gpu_check.sh sets PYTHONPATH too)

LLAMA_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192)
TINY_SHAPE = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
VARIANTS = [("ours", "ours: MaskedDelta (10% mask)"), ("wdown_gm", "(ii) all of W_down, grad * mask"),
            ("all_gm", "(iii) all parameters, grad masks")]
PLAN_MODE = {"ours": "masked", "all_gm": "full"}
"""The plan's training mode matching a step variant (train_row); (ii) has no stage in the plan."""
MASK_RATIO = 0.1
GIB = 2**30
EVAL_RATIO_OK = 1.5
"""(b): token_metrics may take at most this many times the bare forward loop (GPU run)."""
FSDP_REL_TOL = 1e-4
"""(d), float32: FSDP2 and the plain run are 'equal' when the final deltas differ by at most this fraction of
the largest delta and the trajectory's FS/RS/MU by at most this much (tests/test_engines.py meets 1e-5 on CPU)."""
# The shortened demo and the (d) runs: the tiny preset with less data and fewer epochs, no ROUGE.
SMALL = ["data.n_authors=10", "data.qa_per_author=10", "data.n_real_authors=10", "data.n_world_facts=10",
         "model.tiny.pretrain_epochs=2", "finetune.train.epochs=2", "inject.train.epochs=3",
         "unlearn.train.epochs=2", "unlearn.train.checkpoint_every=1", "eval.rouge=false"]
BF16 = ["model.dtype=bfloat16", "finetune.train.mixed_precision=bf16", "inject.train.mixed_precision=bf16",
        "unlearn.train.mixed_precision=bf16"]
FP32 = ["model.dtype=float32"]  # the tiny preset trains without autocast (train.mixed_precision 'no')
# (c): the demo "in bf16" as the paper presets run (bf16 weights and autocast), shortened to fit ~3 minutes.
DEMO_SHORT = SMALL + BF16 + ["study.seeds=2", "study.robustness=off"]
# (d): theta_o etc. are built in float32; the bf16 pair loads them in bf16 and trains under bf16 autocast.
FSDP_SMALL = SMALL + FP32
FSDP_BF16 = ["model.dtype=bfloat16", "unlearn.train.mixed_precision=bf16"]
CPU_MINI_MODEL = ["data.qa_per_author=6", "data.n_real_authors=8", "data.n_world_facts=8", "model.tiny.n_layers=2",
                  "model.tiny.hidden=32", "model.tiny.d_ff=64", "model.tiny.n_heads=2", "model.tiny.vocab_size=400"]
"""(d) in the --cpu dry run: the mini study's model and data (tests/helpers.py MINI), a few seconds a run."""
FSDP_CONFIG = ROOT / "configs" / "accelerate" / "fsdp.yaml"
FSDP_CPU_CONFIG = ROOT / "configs" / "accelerate" / "cpu_fsdp2_2proc.yaml"


# ============================================================================ children: measurements


def build_llama(shape: dict, device: str, dtype):
    """A LlamaForCausalLM of `shape` with random weights, created directly on `device` in `dtype` (no
    download, no host copy of an 8B model: parameters are allocated and initialized on the GPU)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**shape, tie_word_embeddings=False)
    prev = torch.get_default_dtype()
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    return model.train()


def _rss_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))
    except (OSError, StopIteration):
        return None


def _sync(dev: str) -> None:
    import torch

    if dev == "cuda":
        torch.cuda.synchronize()


def _reset_peak(dev: str):
    import torch

    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return
    try:  # CPU: reset the kernel's peak-RSS counter (VmHWM), as masked_step.py does
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _mem_now(dev: str) -> float | None:
    import torch

    if dev == "cuda":
        return torch.cuda.memory_allocated() / GIB
    k = _rss_kib("VmRSS")
    return None if k is None else k * 1024 / GIB


def _peak(dev: str) -> tuple[float | None, float | None]:
    """(peak allocated, peak reserved) GiB since the last reset; CPU: (peak RSS, None)."""
    import torch

    if dev == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / GIB, torch.cuda.max_memory_reserved() / GIB
    k = _rss_kib("VmHWM")
    return (None if k is None else k * 1024 / GIB), None


def child_step(args) -> dict:
    """One variant's steps in this process -> a JSON-able dict (ok, fits, step_s, peak_gib, ...)."""
    import gc

    import torch

    gc.collect()  # an earlier variant in this process (--cpu) must not count in this one's peak

    import masked_step as ms

    dev = "cpu" if args.cpu else "cuda"
    if dev == "cuda" and not torch.cuda.is_available():
        return {"ok": False, "error": "CUDA is not available (use --cpu for the dry run)"}
    shape = TINY_SHAPE if args.cpu else LLAMA_8B
    batch, seq = step_batch(args.cpu)
    warm, timed = (1, 2) if args.cpu else (2, 5)
    t0 = time.perf_counter()
    model = build_llama(shape, dev, torch.bfloat16)
    _sync(dev)
    out = {"ok": True, "variant": args.variant, "device": dev, "batch": batch, "seq": seq, "timed_steps": timed,
           "params_b": sum(p.numel() for p in model.parameters()) / 1e9, "build_s": time.perf_counter() - t0,
           "attn": getattr(model.config, "_attn_implementation", None), "weights_gib": _mem_now(dev)}
    mask = ms.make_mask(model, MASK_RATIO)
    out["masked_vectors"] = int(mask.sum())
    ids = ms.batches(SimpleNamespace(batch=batch, seq=seq, device=dev), shape["vocab_size"], warm + timed)
    _reset_peak(dev)
    base = _mem_now(dev)
    times = []
    try:
        opt, params, _ = ms.setup(args.variant, model, mask, args.lr)
        out["trainable"] = sum(p.numel() for p in params)
        if args.variant == "ours":  # MaskedDelta replaces each down_proj by a registered MaskedDownProj
            from loc_unlearn.train.masked import MaskedDownProj

            out["masked_modules"] = sum(isinstance(m, MaskedDownProj) for m in model.modules())
        for i, x in enumerate(ids):
            opt.zero_grad(set_to_none=True)
            _sync(dev)
            t = time.perf_counter()
            ms.step(model, opt, x, True)  # bf16 autocast, as the paper presets train
            _sync(dev)
            if i >= warm:
                times.append(time.perf_counter() - t)
        out["grad_opt_gib"] = ms.mem_grad_opt(opt, params) / GIB
        out["finite"] = bool(all(torch.isfinite(p).all() for p in params))
        if args.variant == "ours":
            out["deltas_moved"] = bool(max(float(p.detach().abs().max()) for p in params) > 0)
        out["fits"] = True
    except torch.OutOfMemoryError as e:
        out["fits"], out["error"] = False, str(e).splitlines()[0][:300]
    out["step_s"] = statistics.median(times) if times else None
    out["tokens_per_s"] = batch * seq / out["step_s"] if out["step_s"] else None
    out["peak_gib"], out["peak_reserved_gib"] = _peak(dev)
    out["peak_over_start_gib"] = (out["peak_gib"] - base) if (out["peak_gib"] is not None and base is not None) else None
    if dev == "cuda":
        out["gpu"] = torch.cuda.get_device_name()
        out["gpu_total_gib"] = torch.cuda.get_device_properties(0).total_memory / GIB
    return out


def step_batch(cpu: bool) -> tuple[int, int]:
    """(a)'s micro batch: rows x tokens."""
    return (2, 16) if cpu else (4, 512)


def eval_setup(cpu: bool) -> dict:
    """(b)'s sizes: rows, eval batch, timed repeats, words per question, answer words (min, max)."""
    if cpu:
        return {"rows": 16, "batch": 4, "reps": 2, "q_words": 6, "a_words": (3, 12)}
    return {"rows": 256, "batch": 32, "reps": 3, "q_words": 16, "a_words": (16, 112)}


def word_tokenizer(n_words: int):
    """A word-level fast tokenizer: <pad>=0, <eos>=1, <unk>=2, `Question:`, `Answer:`, then w0 .. w{n-1}
    (ids < n_words + 5; whitespace pre-tokenizer). Built in memory, nothing downloaded."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, "Question:": 3, "Answer:": 4}
    for i in range(n_words):
        vocab[f"w{i}"] = len(vocab)
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def synthetic_rows(n: int, n_words: int, q_words: int, a_words: tuple[int, int], seed: int = 0) -> list[dict]:
    """`n` QA rows of random words (answers of a_words[0]..a_words[1] words: batches of different lengths,
    padding inside them)."""
    rng = random.Random(seed)

    def words(k):
        return " ".join(f"w{rng.randrange(n_words)}" for _ in range(k))

    return [{"question": words(q_words), "answer": words(rng.randint(*a_words))} for _ in range(n)]


def child_eval(args) -> dict:
    """(b): token_metrics vs a bare forward loop over the same padded batches -> a JSON-able dict."""
    import torch

    from loc_unlearn.data.formatting import collate, context_length, encode_fit, length_batches, pad_id
    from loc_unlearn.evaluate.token_metrics import token_metrics

    dev = "cpu" if args.cpu else "cuda"
    if dev == "cuda" and not torch.cuda.is_available():
        return {"ok": False, "error": "CUDA is not available (use --cpu for the dry run)"}
    shape = TINY_SHAPE if args.cpu else LLAMA_8B
    st = eval_setup(args.cpu)
    n_words = min(4000, shape["vocab_size"] - 8)
    tok = word_tokenizer(n_words)
    rows = synthetic_rows(st["rows"], n_words, st["q_words"], st["a_words"])
    t0 = time.perf_counter()
    model = build_llama(shape, dev, torch.bfloat16).eval()
    _sync(dev)
    out = {"ok": True, "device": dev, "rows": len(rows), "batch": st["batch"], "reps": st["reps"],
           "build_s": time.perf_counter() - t0, "weights_gib": _mem_now(dev),
           "params_b": sum(p.numel() for p in model.parameters()) / 1e9}
    # The batches token_metrics runs (evaluate/token_metrics._run): encoded rows, sorted by length, right-padded.
    items = [encode_fit(tok, r["question"], r["answer"], context_length(model))[0] for r in rows]
    lengths = [len(it["input_ids"]) for it in items]
    max_id = max(max(it["input_ids"]) for it in items)
    if max_id >= shape["vocab_size"]:
        return {"ok": False, "error": f"token id {max_id} >= vocab {shape['vocab_size']}"}
    batches = [collate([items[i] for i in idx], pad_id(tok))
               for idx in length_batches(lengths, st["batch"], shuffle=False)]
    out |= {"batches": len(batches), "tokens": sum(lengths), "padded_tokens": sum(b["input_ids"].numel() for b in batches),
            "max_len": max(lengths), "min_len": min(lengths)}

    def bare():
        with torch.no_grad():
            for b in batches:
                model(input_ids=b["input_ids"].to(dev), attention_mask=b["attention_mask"].to(dev), use_cache=False)
        _sync(dev)

    def metrics():
        res = token_metrics(model, tok, rows, batch_size=st["batch"])
        _sync(dev)
        return res

    t = time.perf_counter()
    bare()  # warm-up: kernels, allocator, autotuning
    res = metrics()
    out["warmup_s"] = time.perf_counter() - t
    tm, bl = [], []
    for i in range(st["reps"]):  # alternated, so any drift hits both alike
        _reset_peak(dev)
        t = time.perf_counter()
        res = metrics()
        tm.append(time.perf_counter() - t)
        if i == 0:
            out["peak_metrics_gib"] = _peak(dev)[0]
            _reset_peak(dev)
        t = time.perf_counter()
        bare()
        bl.append(time.perf_counter() - t)
        if i == 0:
            out["peak_bare_gib"] = _peak(dev)[0]
    out["metrics_s"], out["bare_s"] = statistics.median(tm), statistics.median(bl)
    out["ratio"] = out["metrics_s"] / out["bare_s"] if out["bare_s"] else None
    out["model_device"] = next(model.parameters()).device.type
    out["es_rows"] = len(res["es"])
    out["finite"] = bool(all(math.isfinite(x) for k in ("es", "nll") for x in res[k]))
    try:
        out["plan_gib"] = eval_plan(shape, st["batch"], max(lengths))
    except Exception as e:  # the plan is a reference only; its failure must not lose the measurement
        out["plan_error"] = f"{type(e).__name__}: {e}"
    if dev == "cuda":
        out["gpu"] = torch.cuda.get_device_name()
    return out


# ============================================================================ the plan's numbers


def _arch(shape: dict):
    return _arch_cached(tuple(sorted(shape.items())))


@functools.lru_cache(maxsize=4)
def _arch_cached(items: tuple):
    """plan.Arch of a LlamaForCausalLM of this shape (untied embeddings, as build_llama), built on the meta
    device by plan.arch_from_config (a few seconds at 8B: cached)."""
    from loc_unlearn import plan as P

    return P.arch_from_config({"model_type": "llama", **dict(items), "tie_word_embeddings": False}, "gpu_check shape")


def step_plan(shape: dict, batch: int, seq: int, ratio: float = MASK_RATIO) -> dict:
    """`loc-unlearn plan`'s per-GPU numbers (GiB) for (a)'s variants: plan.train_row under no engine on 1 GPU at
    micro batch `batch` x `seq` tokens, bf16 weights under bf16 autocast, one forward per step (what
    masked_step.step runs). {variant: {weights, grads, optim, activations, other, total} or None (no plan case)}."""
    from loc_unlearn import plan as P
    from loc_unlearn.config import TrainConfig

    arch = _arch(shape)
    tc = TrainConfig(batch_size=batch, micro_batch_size=batch, max_length=seq, mixed_precision="bf16")
    out = {}
    for v, _ in VARIANTS:
        mode = PLAN_MODE.get(v)
        if mode is None:
            out[v] = None
            continue
        spec = P.TrainSpec(v, "gpu_check step", mode, tc, 1, ratio if mode == "masked" else 0.0)
        r = P.train_row(arch, spec, P.DTYPE_BYTES["bfloat16"], "none", 1)
        out[v] = {k: getattr(r, k) / GIB for k in ("weights", "grads", "optim", "activations", "other", "total")}
        out[v] |= {"micro": r.micro, "seq": r.seq}
    return out


def eval_plan(shape: dict, batch: int, seq: int) -> float:
    """The plan's `evaluate` row (teacher-forced, no generation) for `batch` rows of up to `seq` tokens in bf16:
    weights + plan.inference_bytes, GiB."""
    from loc_unlearn import plan as P

    arch = _arch(shape)
    d = P.DTYPE_BYTES["bfloat16"]
    return (arch.n_params * d + P.inference_bytes(arch, batch, seq, d)) / GIB


# ============================================================================ parent: helpers


class Section:
    """Collects one section's printed lines, its rows of the one table, and its summary notes."""

    def __init__(self, key: str, title: str):
        self.key, self.title, self.lines, self.summary, self.data = key, title, [], [], {}
        self.rows: list[list[str]] = []  # [case, measured, plan / reference, result] of the one table
        self.status, self.t0 = "not run", time.time()

    def say(self, line: str = "") -> None:
        self.lines.append(line)

    def row(self, case: str, measured: str, ref: str, result: str) -> None:
        self.rows.append([case, measured, ref, result])

    def text(self) -> str:
        return "\n".join([f"## ({self.key}) {self.title}", *self.lines, f"[section {self.key}: {self.status}, "
                          f"{time.time() - self.t0:.0f} s]", ""])


def env_for_children(**extra) -> dict:
    env = dict(os.environ)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("LOC_UNLEARN_QUIET", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _few_threads(**extra) -> dict:
    """The environment of the processes that (c) and (d) run side by side (up to 7 at once on a GPU machine):
    OMP_NUM_THREADS 2 unless set, so their CPU thread pools do not oversubscribe the cores."""
    return env_for_children(**({"OMP_NUM_THREADS": "2"} if "OMP_NUM_THREADS" not in os.environ else {}), **extra)


def run_proc(cmd: list[str], timeout: float, log: Path | None = None, env: dict | None = None,
             cwd: Path = ROOT) -> dict:
    """Run `cmd` in its own process group; on timeout the whole group (torchrun children too) is killed."""
    t0 = time.time()
    if timeout <= 1:
        return {"rc": None, "timed_out": True, "stdout": "", "stderr": "no time left in the budget", "s": 0.0}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(cwd),
                         env=env or env_for_children(), start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = p.communicate()
        timed_out = True
    res = {"rc": p.returncode, "timed_out": timed_out, "stdout": out or "", "stderr": err or "", "s": time.time() - t0}
    if log is not None:
        with open(log, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n# rc={res['rc']} timed_out={timed_out} {res['s']:.1f} s\n--- stdout\n"
                    f"{res['stdout'][-20000:]}\n--- stderr\n{res['stderr'][-20000:]}\n\n")
    return res


def _failed(res: dict) -> str:
    return "timed out" if res["timed_out"] else f"failed (rc {res['rc']})"


_ERROR_LINE = re.compile(r"^(error: |[A-Za-z_.]*(Error|Exception)\b:? )")


def _tail(res: dict, n: int = 6) -> str:
    """The last `n` output lines, after the last error line (a launcher's summary hides the root cause)."""
    lines = [ln for ln in (res["stdout"] + "\n" + res["stderr"]).splitlines() if ln.strip()]
    errs = [ln for ln in lines if _ERROR_LINE.match(ln.strip()) and "ChildFailedError" not in ln]
    out = ([f"root error: {errs[-1].strip()}"] if errs else []) + lines[-n:]
    return "\n".join("    " + ln for ln in out)


def _json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def _count(n: float | None) -> str:
    if n is None:
        return "n/a"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div / 10:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def _f(x, nd=2, unit=""):
    return "n/a" if x is None else f"{x:.{nd}f}{unit}"


def _mem(gib: float | None) -> str:
    """A size in GiB, or in MiB below 0.1 GiB (the tiny shapes of the dry run)."""
    if gib is None:
        return "n/a"
    return f"{gib:.2f} GiB" if gib >= 0.1 else f"{gib * 1024:.2f} MiB"


def _e(x, nd=2):
    return "n/a" if x is None else f"{x:.{nd}e}"


def _child_cmd(kind: str, arg: str, args) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), f"--child-{kind}", arg, "--lr", str(args.lr)]
    return cmd + ["--cpu"] * args.cpu


def _limit(sec: Section, limit: float, deadline: float) -> float:
    """The section's own deadline: its limit from its start, within the whole check's."""
    return min(deadline, sec.t0 + limit)


# ============================================================================ stage devices (c), (d)


def stage_devices(runs: Path) -> dict[str, Counter]:
    """{stage: Counter of 'device dtype' (or 'no model') over its runs} from every runs/<stage>/<hash>/metrics.json
    (each stage records the device and dtype its model ran on: utils.device_info)."""
    out: dict[str, Counter] = {}
    for f in sorted(runs.glob("*/*/metrics.json")):
        try:
            m = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        key = f"{m['device']} {m.get('dtype', '?')}" if m.get("device") else "no model"
        out.setdefault(f.parent.parent.name, Counter())[key] += 1
    return out


def device_lines(devs: dict[str, Counter], prefix: str = "") -> list[str]:
    return [f"{prefix}{stage} -> " + ", ".join(f"{k} x{n}" if n > 1 else k for k, n in sorted(c.items()))
            for stage, c in devs.items()]


def off_device(devs: dict[str, Counter], expected: str) -> list[str]:
    """Stages with a run whose model was not on `expected` ('cuda', 'cpu')."""
    return [s for s, c in devs.items() if any(k != "no model" and k.split()[0] != expected for k in c)]


def device_summary(devs: dict[str, Counter], expected: str) -> tuple[str, bool]:
    """('N stages (M runs) on cuda; no model: data, ...', every model stage on `expected`)."""
    model = {s: c for s, c in devs.items() if any(k != "no model" for k in c)}
    bad = off_device(devs, expected)
    runs = sum(n for c in model.values() for k, n in c.items() if k != "no model")
    dtypes = sorted({k.split()[1] for c in model.values() for k in c if k != "no model"})
    none = [s for s in devs if s not in model]
    text = (f"{len(model)} stages ({runs} runs) " + (f"on {expected}" if not bad else f"NOT all on {expected}: "
                                                     + ", ".join(bad))
            + f" ({'/'.join(dtypes)})" + (f"; no model: {', '.join(none)}" if none else ""))
    return text, bool(model) and not bad


# ============================================================================ (a) step


def section_step(args, sec: Section, deadline: float) -> None:
    shape = TINY_SHAPE if args.cpu else LLAMA_8B
    end = _limit(sec, args.step_limit * len(VARIANTS), deadline)
    batch, seq = step_batch(args.cpu)
    sec.say(f"shape: {shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, d_ff "
            f"{shape['intermediate_size']}, {shape['num_attention_heads']} heads / {shape['num_key_value_heads']} KV, "
            f"vocab {shape['vocab_size']}; random bf16 weights; bf16 autocast; AdamW (wd 0); "
            f"{'one process for the three variants' if args.cpu else 'a fresh process per variant'}")
    try:
        plan = step_plan(shape, batch, seq)
    except Exception as e:  # a reference only: the measurement goes on
        plan = {}
        sec.say(f"plan: error {type(e).__name__}: {e}")
    # GPU: a fresh process per variant (clean peak-memory counters; an OOM or crash loses one variant).
    # --cpu: one process runs the three in turn (same function; saves two interpreter starts in the tests).
    groups = [[v] for v, _ in VARIANTS] if not args.cpu else [[v for v, _ in VARIANTS]]
    got = {}
    for group in groups:
        res = run_proc(_child_cmd("step", ",".join(group), args), min(args.step_limit * len(group), end - time.time()),
                       args.out / "log-a-step.txt")
        for r in _json_lines(res["stdout"]):
            got[r.get("variant")] = r
        for v in group:
            if v not in got or not got[v].get("ok"):
                why = got[v].get("error") if v in got else _failed(res)
                got[v] = {"variant": v, "fits": None, "error": why}
                sec.say(f"- {v}: {why}\n{_tail(res)}")
    rows = [got[v] | {"label": label, "plan": plan.get(v)} for v, label in VARIANTS]
    sec.data["rows"] = rows
    done = [r for r in rows if r.get("fits") is not None]
    if done:
        r0 = done[0]
        where = r0.get("gpu", "CPU")
        total = f" ({r0['gpu_total_gib']:.0f} GiB)" if r0.get("gpu_total_gib") else ""
        info = (f"{where}{total}, {_count(r0['params_b'] * 1e9)} parameters, "
                f"{'weights' if not args.cpu else 'RSS after build'} {_f(r0['weights_gib'])} GiB, "
                f"attention {r0['attn']}, micro batch {r0['batch']} x {r0['seq']} tokens, bf16 autocast, "
                f"{r0['masked_vectors']} masked value vectors ({MASK_RATIO:.0%}), median of {r0['timed_steps']} steps")
        sec.say(info)
        sec.summary.append("(a) " + info)
    mem = "peak GPU mem" if not args.cpu else "peak RSS"
    table = [f"| variant | step (s) | tokens/s | {mem} (GiB) | plan | peak over weights (GiB) | grad+opt (GiB) "
             f"| trainable |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r["plan"]
        pl = _mem(p["total"]) if p else "no plan case"
        if r.get("fits") is None:
            table.append(f"| {r['label']} | {r['error']} | | | {pl} | | | |")
        elif not r["fits"]:
            table.append(f"| {r['label']} | does not fit ({r['error'][:60]}) | | {_f(r['peak_gib'])} | {pl} | | | "
                         f"{_count(r.get('trainable'))} |")
        else:
            table.append(f"| {r['label']} | {_f(r['step_s'], 3)} | {_f(r['tokens_per_s'], 0)} | {_f(r['peak_gib'])} | "
                         f"{pl} | {_f(r['peak_over_start_gib'])} | {_f(r['grad_opt_gib'], 3)} | {_count(r['trainable'])} |")
    for line in table:
        sec.say(line)
    for r in rows:
        if r["plan"]:
            p = r["plan"]
            sec.say(f"plan for {r['variant']} ({PLAN_MODE[r['variant']]}, no engine, 1 GPU, {p['micro']} x {p['seq']}): "
                    + ", ".join(f"{k} {_mem(p[k])}" for k in ("weights", "grads", "optim", "activations", "other"))
                    + f"; total {_mem(p['total'])}")
    if plan:
        sec.say("the plan counts a padded batch (an attention mask, k/v repeated to all heads: plan.saved_bytes); "
                "these steps run unpadded rows, so their activations may come in below it")
    if args.cpu:
        sec.say("plan vs measured: not comparable on the CPU (peak RSS includes the interpreter and libraries)")
    ours = next((r for r in rows if r["variant"] == "ours" and r.get("fits")), None)
    claim = None
    if ours:
        ok80 = ours["peak_gib"] is not None and ours["peak_gib"] * GIB < 80e9
        checks = (f"finite weights {ours['finite']}, deltas moved {ours.get('deltas_moved')}, "
                  f"MaskedDownProj modules {ours.get('masked_modules')}")
        claim = (f"claim '8B masked unlearning on one 80 GB GPU': peak {_f(ours['peak_gib'])} GiB -> "
                 f"{'HOLDS' if ok80 else 'does NOT hold'} at micro batch {ours['batch']} x {ours['seq']}"
                 if not args.cpu else "claim check: only on a GPU (dry run)")
        sec.say(f"{claim}; {checks}")
        sec.summary.append("(a) " + claim)
    for r in rows:
        p = r["plan"]
        if p:
            ratio = (f"; measured / plan {r['peak_gib'] / p['total']:.2f}"
                     if (r.get("fits") and r.get("peak_gib") and not args.cpu) else "")
            ref = f"plan {_mem(p['total'])}{ratio}"
        else:
            ref = "no plan case (W_down-only training is no stage)"
        if r.get("fits") is None:
            sec.row(r["label"], r["error"], ref, "FAILED")
            continue
        meas = (f"{_f(r['step_s'], 3)} s/step ({_f(r['tokens_per_s'], 0)} tok/s), {mem} {_f(r['peak_gib'])} GiB, "
                f"grad+opt {_f(r.get('grad_opt_gib'), 3)} GiB, trainable {_count(r.get('trainable'))}")
        if not r["fits"]:
            sec.row(r["label"], f"does not fit ({mem} {_f(r['peak_gib'])} GiB at OOM)", ref, "does not fit")
            continue
        result = "ok" if r["finite"] else "NON-FINITE weights"
        if r["variant"] == "ours":
            result += ("" if r.get("deltas_moved") else ", deltas did NOT move")
            if not args.cpu:
                result += "; 80 GB claim " + ("HOLDS" if "HOLDS" in (claim or "") else "does NOT hold")
        sec.row(r["label"], meas, ref, result)
    failed = [r for r in rows if r.get("fits") is None]
    sec.status = "ok" if not failed else f"{len(failed)} of {len(rows)} variants failed"


# ============================================================================ (b) eval


def section_eval(args, sec: Section, deadline: float) -> None:
    st = eval_setup(args.cpu)
    shape = TINY_SHAPE if args.cpu else LLAMA_8B
    sec.say(f"{'tiny shape (dry run)' if args.cpu else 'Llama-3.1-8B shape'}, random bf16 weights; {st['rows']} synthetic QA "
            f"rows (word-level tokenizer, vocab < {shape['vocab_size']}), eval batch {st['batch']}; token_metrics "
            f"(answer pass only: rows carry no paraphrase/perturbed answers) vs a bare no_grad forward loop "
            f"(full logits, use_cache=False) over the same padded batches; median of {st['reps']} alternated runs "
            f"after one warm-up each")
    end = _limit(sec, args.eval_limit, deadline)
    res = run_proc(_child_cmd("eval", "1", args), end - time.time(), args.out / "log-b-eval.txt")
    got = next((r for r in _json_lines(res["stdout"]) if "ok" in r), None)
    if got is None or not got.get("ok"):
        why = got.get("error") if got else _failed(res)
        sec.status = f"failed: {why}"
        sec.say(f"eval {why}\n{_tail(res, 10)}")
        sec.row("token_metrics vs bare forward", why, "", "FAILED")
        sec.summary.append(f"(b) {sec.status}")
        return
    sec.data = got
    expected = "cpu" if args.cpu else "cuda"
    mem = "peak GPU mem" if not args.cpu else "peak RSS"
    plan = f"plan's evaluate row {_mem(got.get('plan_gib'))}" if got.get("plan_gib") else \
        f"plan: {got.get('plan_error', 'n/a')}"
    lines = [f"{got.get('gpu', 'CPU')}: {_count(got['params_b'] * 1e9)} parameters, built in {got['build_s']:.1f} s; "
             f"{got['tokens']} tokens ({got['padded_tokens']} padded) in {got['batches']} batches, rows of "
             f"{got['min_len']}..{got['max_len']} tokens; warm-up {got['warmup_s']:.2f} s",
             f"token_metrics {got['metrics_s']:.3f} s vs bare forward {got['bare_s']:.3f} s: ratio {got['ratio']:.2f}; "
             f"model on {got['model_device']}; {got['es_rows']} ES values, finite {got['finite']}",
             f"{mem}: token_metrics {_f(got.get('peak_metrics_gib'))} GiB, bare loop {_f(got.get('peak_bare_gib'))} GiB, "
             f"{plan}"]
    for line in lines:
        sec.say(line)
    sec.summary.append("(b) " + lines[1])
    ok = got["model_device"] == expected and got["finite"] and got["es_rows"] == got["rows"]
    if args.cpu:
        verdict = "ok (dry run: ratio not judged)" if ok else "FAILED"
    else:
        fast = got["ratio"] is not None and got["ratio"] <= EVAL_RATIO_OK
        verdict = (f"{'ok' if fast else 'OVERHEAD'}: on {got['model_device']}, ratio "
                   f"{'<=' if fast else '>'} {EVAL_RATIO_OK}") if ok else "FAILED"
        ok = ok and fast
    sec.row(f"token_metrics vs bare forward ({got['rows']} rows, batch {got['batch']}, {got['tokens']} tokens)",
            f"{got['metrics_s']:.3f} s vs {got['bare_s']:.3f} s, ratio {got['ratio']:.2f}; {mem} "
            f"{_f(got.get('peak_metrics_gib'))} GiB", plan, verdict)
    sec.status = "ok" if ok else f"check failed ({verdict})"


# ============================================================================ (c) demo


def demo_rows_from_results(res: dict) -> dict[str, list[str]]:
    """{METHOD: [AUES Oracle, AUES Random, p, MU95 Oracle, MU95 Random, p]} from a controlled study's
    results.json (its `tests`), formatted like the demo's printed table."""
    out: dict[str, list[str]] = {}
    tests = {(t["method"], t["metric"]): t for t in res.get("tests", [])}
    for m in dict.fromkeys(t["method"] for t in res.get("tests", [])):
        cells = []
        for metric, nd in (("aues", 3), ("mu95", 2)):
            t = tests.get((m, metric))
            if t is None:
                cells += ["n/a"] * 3
                continue
            cells += [f"{t['oracle_mean']:.{nd}f} ± {t['oracle_std']:.{nd}f}",
                      f"{t['random_mean']:.{nd}f} ± {t['random_std']:.{nd}f}",
                      "n/a" if t.get("p_t") is None else f"{t['p_t']:.2f}"]
        out[m.upper()] = cells
    return out


def max_mean_diff(a: dict, b: dict) -> dict[str, float]:
    """Max |difference| of the Oracle and Random means, per metric, between two results.json (methods in both)."""
    ta = {(t["method"], t["metric"]): t for t in a.get("tests", [])}
    tb = {(t["method"], t["metric"]): t for t in b.get("tests", [])}
    out = {}
    for (m, metric), t in ta.items():
        u = tb.get((m, metric))
        if u is not None:
            d = max(abs(t[k] - u[k]) for k in ("oracle_mean", "random_mean"))
            out[metric] = max(out.get(metric, 0.0), d)
    return out


def side_by_side(cpu: dict | None, gpu: dict, gpu_label: str, cpu_label: str = "CPU") -> list[str]:
    lines = ["| method | run | AUES Oracle | AUES Random | p (paired t) | MU95 Oracle | MU95 Random | p (paired t) |",
             "|---|---|---|---|---|---|---|---|"]
    for m in list(dict.fromkeys([*gpu, *(cpu or {})])):
        if m in gpu:
            lines.append(f"| {m} | {gpu_label} | " + " | ".join(gpu[m]) + " |")
        if cpu is not None:
            lines.append(f"| {m} | {cpu_label} | " + " | ".join(cpu.get(m, ["n/a"] * 6)) + " |")
    return lines


def demo_command(runs_dir: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "loc_unlearn.cli", "demo", f"runs_dir={runs_dir}", *overrides]


def validate_overrides(overrides: list[str]) -> None:
    """The overrides parse into a valid Config (what the CLI checks before any work)."""
    from loc_unlearn.config import build_config

    build_config(overrides=overrides)  # parses and validates (Config.validate), like the CLI


def _study(runs: Path) -> dict | None:
    found = sorted(runs.glob("study-controlled/*/results.json"))
    return json.loads(found[-1].read_text()) if found else None


def section_demo(args, sec: Section, deadline: float) -> None:
    overrides = DEMO_SHORT + args.demo_override
    runs = Path(tempfile.mkdtemp(prefix="gpu-check-demo-"))
    twin_runs = Path(tempfile.mkdtemp(prefix="gpu-check-demo-cpu-"))
    cmd = demo_command(runs, [*overrides, "device=auto"])
    twin = demo_command(twin_runs, [*overrides, "device=cpu"])
    sec.say(f"command: loc-unlearn demo runs_dir=DIR {' '.join(overrides)} device=auto")
    validate_overrides([f"runs_dir={runs}", *overrides, "device=auto"])
    run_here = not args.cpu or "demo" in args.sections_explicit
    if not run_here:
        sec.say("demo: SKIPPED in the --cpu dry run (about a minute on the CPU: --cpu --sections demo runs it); "
                "overrides validated. On a GPU: bash benchmarks/gpu_check.sh")
        sec.status = "skipped (dry run)"
        sec.row("demo device=auto: every stage's device", "skipped in the --cpu dry run", "", "skipped")
        sec.summary.append("(c) skipped in the --cpu dry run")
        shutil.rmtree(runs, ignore_errors=True)
        shutil.rmtree(twin_runs, ignore_errors=True)
        return
    with_twin = not args.cpu and not args.no_cpu_twin
    end = _limit(sec, args.demo_limit, deadline)
    done: dict[str, dict] = {}
    jobs = {"gpu": (cmd, _few_threads())}
    if with_twin:  # the same demo on the CPU, beside it (no GPU visible to it; a few threads)
        sec.say("CPU twin: the same command with device=cpu (CUDA_VISIBLE_DEVICES='', OMP_NUM_THREADS=4)")
        jobs["cpu"] = (twin, env_for_children(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="4"))
    threads = [threading.Thread(target=lambda k=k, c=c, e=e: done.__setitem__(
        k, run_proc(c, end - time.time(), args.out / f"log-c-demo-{k}.txt", env=e))) for k, (c, e) in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    res = done["gpu"]
    expected = "cpu" if args.cpu else "cuda"
    devs = stage_devices(runs)
    sec.say(f"stage -> device, dtype (runs/<stage>/<hash>/metrics.json; expected {expected}):")
    for line in device_lines(devs, "  "):
        sec.say(line)
    dev_text, dev_ok = device_summary(devs, expected)
    sec.data = {"devices": {s: dict(c) for s, c in devs.items()}, "wall_s": res["s"]}
    r = _study(runs)
    if res["rc"] != 0 or r is None:
        sec.status = _failed(res)
        sec.say(f"demo {sec.status} after {res['s']:.0f} s\n{_tail(res, 12)}")
        sec.row("demo device=auto", f"{sec.status} after {res['s']:.0f} s; {dev_text}", "", "FAILED")
        sec.summary.append(f"(c) demo {sec.status} after {res['s']:.0f} s; {dev_text}")
        return
    gpu = demo_rows_from_results(r)
    label = f"{expected} bf16"
    ref, twin_r = "", None
    if with_twin:
        tres = done["cpu"]
        twin_r = _study(twin_runs) if tres["rc"] == 0 else None
        if twin_r is None:
            sec.say(f"CPU twin {_failed(tres)} after {tres['s']:.0f} s\n{_tail(tres, 8)}")
            ref = f"CPU twin {_failed(tres)}"
        else:
            d = max_mean_diff(r, twin_r)
            twin_devs = stage_devices(twin_runs)
            ref = (f"CPU twin ({tres['s']:.0f} s): max |diff| of means AUES {_f(d.get('aues'), 3)}, "
                   f"MU95 {_f(d.get('mu95'), 2)}; twin {device_summary(twin_devs, 'cpu')[0]}")
            sec.data["twin"] = {"wall_s": tres["s"], "max_mean_diff": d}
    table = side_by_side(demo_rows_from_results(twin_r) if twin_r else None, gpu, label, "cpu bf16 (twin)")
    for line in table:
        sec.say(line)
    inj = ", ".join(f"seed {i['seed']} ES {i['forget_es']:.2f}/{i['target_es']:.2f}"
                    f"{'' if i['reached'] else ' NOT reached'}" for i in r.get("injection", []))
    extra = [f"injection (forget ES / target): {inj}",
             f"demo wall time {res['s']:.0f} s (study elapsed {r.get('elapsed_s', float('nan')):.0f} s)"]
    for line in extra:
        sec.say(line)
    if ref:
        sec.say(ref)
    sec.row(f"demo device=auto ({len(devs)} stages), {res['s']:.0f} s", dev_text, ref or "no CPU twin",
            "ok: every model stage on " + expected if dev_ok else f"NOT on {expected}")
    sec.summary += [f"(c) demo ({' '.join(overrides)} device=auto), {dev_text}:", "", *table, "",
                    *[f"(c) {x}" for x in extra]]
    sec.status = "ok" if dev_ok else f"stages not on {expected}: {', '.join(off_device(devs, expected))}"
    shutil.rmtree(runs, ignore_errors=True)
    shutil.rmtree(twin_runs, ignore_errors=True)


# ============================================================================ (d) fsdp


def parse_inject_output(text: str) -> dict:
    """`loc-unlearn inject` prints `theta_o: PATH` and `mask: PATH`."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(theta_o|mask):\s+(\S.*)$", line.strip())
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def fsdp_commands(runs: Path, theta_o: str, mask: str, theta_r: str, overrides: list[str],
                  config: Path = FSDP_CONFIG, nproc: int = 1) -> dict[str, list[str]]:
    """The same `loc-unlearn unlearn` run without a launcher ('plain') and under `accelerate launch` with the
    FSDP2 config ('fsdp'), each in its own runs dir under `runs`."""
    args = ["unlearn", f"model={theta_o}", f"mask={mask}", f"reference={theta_r}", "method=npo", *overrides]
    return {"plain": [sys.executable, "-m", "loc_unlearn.cli", *args, f"runs_dir={runs / 'plain'}"],
            "fsdp": [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                     "--num_processes", str(nproc), "-m", "loc_unlearn.cli", *args, f"runs_dir={runs / 'fsdp'}"]}


def _unlearn_run(runs_dir: Path):
    runs = [d for d in sorted((runs_dir / "unlearn").glob("*")) if (d / "manifest.json").is_file()]
    return runs[-1] if runs else None


def _last_ckpt(run: Path) -> Path | None:
    cks = sorted((run / "train").glob("ckpt-*"), key=lambda p: int(p.name.split("-")[1]))
    return cks[-1] if cks else None


def compare_runs(plain: Path, fsdp: Path) -> dict:
    """Two unlearning run dirs: the engines they recorded, devices/dtypes, max |diff| of the final deltas (and
    the largest delta), of the trajectory's FS/RS/MU, and whether they trained the same masked columns."""
    import torch
    from safetensors.torch import load_file

    out = {}
    mets, deltas = {}, {}
    for k, run in (("plain", plain), ("fsdp", fsdp)):
        mets[k] = json.loads((run / "metrics.json").read_text())
        ck = _last_ckpt(run)
        st = json.loads((ck / "trainer_state.json").read_text()) if ck and (ck / "trainer_state.json").is_file() else {}
        out[f"engine_{k}"] = st.get("engine", "?")
        out[f"device_{k}"] = f"{mets[k].get('device')} {mets[k].get('dtype')}"
        deltas[k] = load_file(str(ck / "delta.safetensors")) if ck else {}
    a, b = mets["plain"]["trajectory"], mets["fsdp"]["trajectory"]
    out["points"] = (len(a), len(b))
    diffs = [abs(p[k] - q[k]) for p, q in zip(a, b) for k in ("FS", "RS", "MU")
             if isinstance(p.get(k), (int, float)) and isinstance(q.get(k), (int, float))]
    out["dtraj"] = max(diffs) if diffs else None
    out["daues"] = abs(mets["plain"]["aues"] - mets["fsdp"]["aues"])
    dp, df = deltas["plain"], deltas["fsdp"]
    names = [n for n in dp if n.startswith("delta.")]
    out["same_idx"] = bool(dp) and dp.keys() == df.keys() and all(
        torch.equal(dp[n], df[n]) for n in dp if n.startswith("idx."))
    if names and out["same_idx"]:
        out["ddelta"] = max(float((dp[n].float() - df[n].float()).abs().max()) for n in names)
        out["size"] = max(float(dp[n].float().abs().max()) for n in names)
        out["rel"] = out["ddelta"] / out["size"] if out["size"] else out["ddelta"]
    else:
        out["ddelta"] = out["size"] = out["rel"] = None
    return out


def section_fsdp(args, sec: Section, deadline: float) -> None:
    import yaml

    config = FSDP_CPU_CONFIG if args.cpu else FSDP_CONFIG
    nproc = 2 if args.cpu else 1
    acfg = yaml.safe_load(config.read_text())
    fc = acfg.get("fsdp_config", {})
    sec.say(f"accelerate config {config.relative_to(ROOT)}: distributed_type {acfg.get('distributed_type')}, "
            f"fsdp_version {fc.get('fsdp_version')}, reshard_after_forward {fc.get('fsdp_reshard_after_forward')}, "
            f"run with --num_processes {nproc}" + (" (CPU simulation: gloo, ACCELERATE_USE_CPU=true)" if args.cpu else ""))
    runs = Path(tempfile.mkdtemp(prefix="gpu-check-fsdp-"))
    overrides = FSDP_SMALL + (CPU_MINI_MODEL if args.cpu else []) + args.fsdp_override
    validate_overrides([f"runs_dir={runs}", *overrides])
    validate_overrides([f"runs_dir={runs}", *overrides, *FSDP_BF16])
    end = _limit(sec, args.fsdp_limit, deadline)
    env = _few_threads(**({"ACCELERATE_USE_CPU": "true"} if args.cpu else {}))
    prep = run_proc([sys.executable, "-m", "loc_unlearn.cli", "inject", f"runs_dir={runs / 'prep'}", *overrides],
                    end - time.time(), args.out / "log-d-fsdp-prep.txt", env=env)
    paths = parse_inject_output(prep["stdout"])
    theta_r = sorted(d / "model" for d in (runs / "prep" / "finetune").glob("*") if (d / "manifest.json").is_file())
    if prep["rc"] != 0 or "theta_o" not in paths or not theta_r:
        sec.status = f"prerequisite inject {_failed(prep)}"
        sec.say(f"prerequisite `loc-unlearn inject` {_failed(prep)}\n{_tail(prep, 10)}")
        sec.row("FSDP2 vs no engine", sec.status, "", "FAILED")
        sec.summary.append(f"(d) {sec.status}")
        return
    sec.say(f"theta_o, mask, theta_r from `loc-unlearn inject` ({' '.join(overrides)}) in {prep['s']:.0f} s")
    precisions = [("float32", [])] + ([] if args.cpu else [("bf16", FSDP_BF16)])
    if args.cpu:
        sec.say("bf16 pair: GPU only (dry run: float32 only)")
    jobs = {}
    for prec, extra in precisions:
        cmds = fsdp_commands(runs / prec, paths["theta_o"], paths["mask"], str(theta_r[-1]), overrides + extra,
                             config, nproc)
        for name, c in cmds.items():
            jobs[(prec, name)] = c
    sec.say("command (fsdp): accelerate launch " + " ".join(jobs[("float32", "fsdp")][3:7]) + " -m loc_unlearn.cli "
            "unlearn model=THETA_O mask=MASK reference=THETA_R method=npo ...")
    done: dict = {}
    threads = [threading.Thread(target=lambda k=k, c=c: done.__setitem__(
        k, run_proc(c, end - time.time(), args.out / f"log-d-fsdp-{k[0]}-{k[1]}.txt", env=env))) for k, c in jobs.items()]
    for t in threads:  # side by side: the GPU has room for all of them; timings are not the point here
        t.start()
    for t in threads:
        t.join()
    expected = "cpu" if args.cpu else "cuda"
    all_ok = True
    sec.data = {}
    for prec, _ in precisions:
        got = {}
        for name in ("plain", "fsdp"):
            res = done[(prec, name)]
            run = _unlearn_run(runs / prec / name)
            if res["rc"] != 0 or run is None:
                sec.say(f"{prec} {name} unlearn {_failed(res)}\n{_tail(res, 10)}")
                got[name] = None
                continue
            got[name] = run
            met = json.loads((run / "metrics.json").read_text())
            traj = "; ".join(f"step {p['step']} FS {p['FS']:.3f} RS {p['RS']:.3f}" for p in met["trajectory"])
            sec.say(f"{prec} {name:5s} ({res['s']:.0f} s): {traj}; AUES {met['aues']:.3f}")
        case = f"{prec}: FSDP2 ({nproc} process{'es' if nproc > 1 else ''}) vs no engine"
        if not (got.get("plain") and got.get("fsdp")):
            all_ok = False
            sec.row(case, ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in got.items()), "", "FAILED")
            continue
        c = compare_runs(got["plain"], got["fsdp"])
        sec.data[prec] = c
        engines_ok = (c["engine_plain"], c["engine_fsdp"]) == ("none", "fsdp2")
        meas = (f"final deltas max |diff| {_e(c['ddelta'])} (largest delta {_e(c['size'])}, relative "
                f"{_e(c['rel'], 1)}); trajectory max |dFS|,|dRS|,|dMU| {_e(c['dtraj'], 1)}; |dAUES| {_e(c['daues'], 1)}")
        ref = (f"engines recorded: {c['engine_plain']} / {c['engine_fsdp']}; devices {c['device_plain']} / "
               f"{c['device_fsdp']}; same masked columns {c['same_idx']}")
        sec.say(f"{case}: {meas}; {ref}")
        same_shape = c["same_idx"] and c["points"][0] == c["points"][1]
        if prec == "float32":
            equal = (same_shape and c["rel"] is not None and c["rel"] <= FSDP_REL_TOL and c["dtraj"] is not None
                     and c["dtraj"] <= FSDP_REL_TOL)
            result = ("equal" if equal else "NOT equal") + f" (tol {FSDP_REL_TOL:g})"
            ok = equal and engines_ok
        else:
            result = "reported (bf16: rounding differs between the engines' mixed-precision paths)"
            ok = same_shape and engines_ok
        if not engines_ok:
            result += "; WRONG engine"
        if not c["device_fsdp"].startswith(expected) or not c["device_plain"].startswith(expected):
            result += f"; NOT on {expected}"
            ok = False
        all_ok = all_ok and ok
        sec.row(case, meas, ref, result)
        sec.summary.append(f"(d) {case}: {meas}; {ref} -> {result}")
    devs: dict[str, Counter] = {}
    for sub in [runs / "prep", *(runs / prec / name for prec, _ in precisions for name in ("plain", "fsdp"))]:
        for stage, cnt in stage_devices(sub).items():
            devs.setdefault(stage, Counter()).update(cnt)
    dev_text, dev_ok = device_summary(devs, expected)
    sec.say(f"stage -> device, dtype over the prep and unlearn runs (expected {expected}):")
    for line in device_lines(devs, "  "):
        sec.say(line)
    sec.row("stage devices of these runs", dev_text, "", "ok" if dev_ok else f"NOT all on {expected}")
    sec.status = "ok" if all_ok and dev_ok else "mismatch or failure (see the table)"
    if all_ok:
        shutil.rmtree(runs, ignore_errors=True)


# ============================================================================ main


SECTIONS = {"step": ("a", "masked unlearning step at Llama-3.1-8B shape, next to the plan", section_step),
            "eval": ("b", "evaluation at Llama-3.1-8B shape: token_metrics vs a bare forward loop", section_eval),
            "demo": ("c", "shortened demo with device=auto: every stage's device", section_demo),
            "fsdp": ("d", "masked unlearning under FSDP2 (accelerate launch) vs no engine", section_fsdp)}
ALONE = ("step", "eval")
"""Sections that run one after the other before the rest (their timings must not share the GPU)."""


def _run_section(name, args, deadline) -> Section:
    key, title, fn = SECTIONS[name]
    dry = args.cpu and name in ("step", "eval")
    sec = Section(key, title + (" [--cpu dry run: tiny shapes]" if dry else ""))
    try:
        fn(args, sec, deadline)
    except Exception as e:  # one section's failure must not lose the others
        import traceback

        sec.status = f"error: {type(e).__name__}: {e}"
        sec.say("    " + traceback.format_exc().strip().replace("\n", "\n    ")[-3000:])
        sec.summary.append(f"({key}) error: {type(e).__name__}: {e}")
    if not sec.rows:
        sec.row(title, "", "", sec.status)
    return sec


def one_table(sections: list[Section]) -> list[str]:
    """THE table: one row per case of every section."""
    def cell(x: str) -> str:
        return x.replace("|", "\\|").replace("\n", " ")

    out = ["| section | case | measured | plan / reference | result |", "|---|---|---|---|---|"]
    for s in sections:
        for r in s.rows:
            out.append(f"| ({s.key}) | " + " | ".join(cell(x) for x in r) + " |")
    return out


def header(args) -> list[str]:
    """Versions without importing the packages (the GPU name comes from (a))."""
    from importlib import metadata

    def v(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "missing"

    gpu = "no GPU query (dry run)" if args.cpu else _nvidia_smi()
    return [f"gpu_check {'--cpu dry run' if args.cpu else 'GPU run'} at {time.strftime('%Y-%m-%d %H:%M:%S')}",
            f"host {platform.node()}, python {platform.python_version()}, torch {v('torch')}, transformers "
            f"{v('transformers')}, accelerate {v('accelerate')}, {gpu}"]


def _nvidia_smi() -> str:
    try:
        p = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        return p.stdout.strip().replace("\n", "; ") or "nvidia-smi printed nothing"
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"nvidia-smi failed ({type(e).__name__})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", action="store_true", help="dry run: tiny shapes on the CPU; demo skipped, fsdp on 2 "
                                                       "gloo processes")
    ap.add_argument("--sections", default="", help=f"comma list of {','.join(SECTIONS)} (default: all)")
    ap.add_argument("--out", default=None, help="folder for summary.md, results.json, logs (default $OUT or runs/gpu-check)")
    ap.add_argument("--budget-s", type=float, default=470.0, help="wall-clock budget of the whole check")
    ap.add_argument("--step-limit", type=float, default=65.0, help="(a) time limit per step variant (s)")
    ap.add_argument("--eval-limit", type=float, default=75.0, help="(b) time limit (s)")
    ap.add_argument("--demo-limit", type=float, default=180.0, help="(c) time limit, demo and its CPU twin (s)")
    ap.add_argument("--fsdp-limit", type=float, default=180.0, help="(d) time limit, all its runs (s)")
    ap.add_argument("--no-cpu-twin", action="store_true", help="(c): skip the demo's device=cpu twin")
    ap.add_argument("--demo-override", action="append", default=[], help="extra key=value for the demo")
    ap.add_argument("--fsdp-override", action="append", default=[], help="extra key=value for (d)")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--child-step", default="", help=argparse.SUPPRESS)
    ap.add_argument("--child-eval", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_step:
        for v in args.child_step.split(","):
            args.variant = v
            print(json.dumps(child_step(args)), flush=True)
        return 0
    if args.child_eval:
        print(json.dumps(child_eval(args)), flush=True)
        return 0
    t_start = time.time()
    deadline = t_start + args.budget_s
    args.sections_explicit = [s for s in args.sections.split(",") if s]
    names = args.sections_explicit or list(SECTIONS)
    bad = [n for n in names if n not in SECTIONS]
    if bad:
        ap.error(f"unknown sections {bad}; known: {', '.join(SECTIONS)}")
    names = [n for n in SECTIONS if n in names]  # in section order
    args.out = Path(args.out or os.environ.get("OUT") or ROOT / "runs" / "gpu-check")
    args.out.mkdir(parents=True, exist_ok=True)
    for f in args.out.glob("log-*.txt"):
        f.unlink()
    head = header(args)
    print("\n".join(head), flush=True)
    done: dict[str, Section] = {}
    for n in [n for n in names if n in ALONE]:  # alone: their timings must not share the GPU
        done[n] = _run_section(n, args, deadline)
        print(done[n].text(), flush=True)
    rest = [n for n in names if n not in ALONE]
    threads = {n: threading.Thread(target=lambda n=n: done.__setitem__(n, _run_section(n, args, deadline)))
               for n in rest}
    for n, t in threads.items():
        print(f"[started section {SECTIONS[n][0]} ({n})]", flush=True)
        t.start()
    for n in rest:
        threads[n].join()
        print(done[n].text(), flush=True)
    total = time.time() - t_start
    secs = [done[n] for n in names]
    table = one_table(secs)
    summary = ["### GPU check (benchmarks/gpu_check.sh)", "", *[f"{h}  " for h in head], "", *table, ""]
    summary += [f"({s.key}) {s.title}: {s.status}  " for s in secs] + [""]
    for s in secs:
        if s.summary:
            summary += [*s.summary, ""]
    summary.append(f"total {total:.0f} s (budget {args.budget_s:.0f} s)")
    block = "\n".join(summary)
    print("=" * 30 + " summary for benchmarks/RESULTS.md " + "=" * 30)
    print(block)
    print("=" * 95)
    (args.out / "summary.md").write_text(block + "\n")
    (args.out / "results.json").write_text(json.dumps(
        {"header": head, "total_s": total, "table": table,
         "sections": {n: {"status": done[n].status, "data": done[n].data, "rows": done[n].rows,
                          "lines": done[n].lines} for n in names}},
        indent=1, default=str))
    print(f"written: {args.out / 'summary.md'}, {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
