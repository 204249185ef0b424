"""One prepared GPU check (issues 13, 14): run `bash benchmarks/gpu_check.sh` on one GPU; <= 8 minutes on an H200.

  (a) step   the masked unlearning step at Llama-3.1-8B shape (32 layers, hidden 4096, d_ff 14336, 32 heads,
             8 KV heads, vocab 128256), random bf16 weights built on the GPU (no download), micro batch 4 x 512
             tokens, bf16 autocast, AdamW: step time and peak GPU memory of
               ours      MaskedDelta, 10% value-vector mask (deltas only)
               wdown_gm  (ii) all of W_down trainable, gradient * mask
               all_gm    (iii) every parameter trainable, element-wise gradient masks ("does not fit" on OOM)
             -- the README's claim "8B masked unlearning on one 80 GB GPU". The variants are
             benchmarks/masked_step.py's (setup/step/make_mask/mem_grad_opt), one fresh process each.
  (b) demo   `loc-unlearn demo` on the GPU with bf16 overrides in a temp runs dir; its table next to the CPU one
             (--cpu-table FILE: a results.json or a Markdown file with the table; default: the README's).
  (c) fsdp   masked unlearning (npo, tiny preset, few epochs) launched with `accelerate launch --config_file
             configs/accelerate/fsdp.yaml --num_processes 1`, compared with the same run without a launcher.

Every section runs in its own process(es) with its own time limit, so one failure or timeout loses only
itself; (a) runs alone (clean timings), then (b) and (c) run side by side. The script ends with a Markdown
summary block for benchmarks/RESULTS.md, also written to --out (default $OUT, else runs/gpu-check) with
results.json and one log per section.

`--cpu` is the dry run the test suite uses (tests/test_gpu_check.py, a few seconds): the same code with tiny
shapes on the CPU; (b) and (c) are skipped with a line saying so (their commands are still built and their
configs validated). `--cpu --sections demo` runs the demo on the CPU (minutes); (c) needs a GPU even then:
accelerate's FSDP plugin refuses a machine without one.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # masked_step (the CPU benchmark) is reused, not copied

LLAMA_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192)
TINY_SHAPE = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
VARIANTS = [("ours", "ours: MaskedDelta (10% mask)"), ("wdown_gm", "(ii) all of W_down, grad * mask"),
            ("all_gm", "(iii) all parameters, grad masks")]
GIB = 2**30
# The demo "in bf16" as the paper presets run: bf16 weights (model.dtype) and bf16 autocast in every training.
DEMO_BF16 = ["model.dtype=bfloat16", "finetune.train.mixed_precision=bf16", "inject.train.mixed_precision=bf16",
             "unlearn.train.mixed_precision=bf16"]
# (c): the tiny preset, shortened; bf16 weights so the delta fold meets bf16 columns as in the paper presets.
# Few epochs and no ROUGE: this section checks the launch path and the fold, not the numbers.
FSDP_SMALL = ["data.n_authors=10", "data.qa_per_author=10", "data.n_real_authors=10", "data.n_world_facts=10",
              "model.tiny.pretrain_epochs=2", "finetune.train.epochs=2", "inject.train.epochs=3",
              "unlearn.train.epochs=2", "unlearn.train.checkpoint_every=1", "eval.rouge=false",
              "model.dtype=bfloat16", "finetune.train.mixed_precision=bf16", "inject.train.mixed_precision=bf16",
              "unlearn.train.mixed_precision=bf16"]
FSDP_CONFIG = ROOT / "configs" / "accelerate" / "fsdp.yaml"


# ============================================================================ child: one step variant


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
    batch, seq = (2, 16) if args.cpu else (4, 512)
    warm, timed = (1, 2) if args.cpu else (2, 5)
    t0 = time.perf_counter()
    model = build_llama(shape, dev, torch.bfloat16)
    if dev == "cuda":
        torch.cuda.synchronize()
    out = {"ok": True, "variant": args.variant, "device": dev, "batch": batch, "seq": seq, "timed_steps": timed,
           "params_b": sum(p.numel() for p in model.parameters()) / 1e9, "build_s": time.perf_counter() - t0,
           "attn": getattr(model.config, "_attn_implementation", None), "weights_gib": _mem_now(dev)}
    mask = ms.make_mask(model, 0.1)
    out["masked_vectors"] = int(mask.sum())
    ids = ms.batches(SimpleNamespace(batch=batch, seq=seq, device=dev), shape["vocab_size"], warm + timed)
    _reset_peak(dev)
    base = _mem_now(dev)
    times = []
    try:
        opt, params, _ = ms.setup(args.variant, model, mask, args.lr)
        out["trainable"] = sum(p.numel() for p in params)
        for i, x in enumerate(ids):
            opt.zero_grad(set_to_none=True)
            ms.sync(dev)
            t = time.perf_counter()
            ms.step(model, opt, x, True)  # bf16 autocast, as the paper presets train
            ms.sync(dev)
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


# ============================================================================ parent: helpers


class Section:
    """Collects one section's printed lines (sections (b) and (c) run side by side) and its summary."""

    def __init__(self, key: str, title: str):
        self.key, self.title, self.lines, self.summary, self.data = key, title, [], [], {}
        self.status, self.t0 = "not run", time.time()

    def say(self, line: str = "") -> None:
        self.lines.append(line)

    def text(self) -> str:
        return "\n".join([f"## ({self.key}) {self.title}", *self.lines, f"[section {self.key}: {self.status}, "
                          f"{time.time() - self.t0:.0f} s]", ""])


def env_for_children() -> dict:
    env = dict(os.environ)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("LOC_UNLEARN_QUIET", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    return env


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


# ============================================================================ (a) step


def section_step(args, sec: Section, deadline: float) -> None:
    shape = TINY_SHAPE if args.cpu else LLAMA_8B
    sec.say(f"shape: {shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, d_ff "
            f"{shape['intermediate_size']}, {shape['num_attention_heads']} heads / {shape['num_key_value_heads']} KV, "
            f"vocab {shape['vocab_size']}; random bf16 weights; bf16 autocast; AdamW (wd 0); "
            f"{'one process for the three variants' if args.cpu else 'a fresh process per variant'}")
    # GPU: a fresh process per variant (clean peak-memory counters; an OOM or crash loses one variant).
    # --cpu: one process runs the three in turn (same function; saves two interpreter starts in the tests).
    groups = [[v] for v, _ in VARIANTS] if not args.cpu else [[v for v, _ in VARIANTS]]
    got = {}
    for group in groups:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child-step", ",".join(group), "--lr", str(args.lr)]
        cmd += ["--cpu"] * args.cpu
        res = run_proc(cmd, min(args.step_limit * len(group), deadline - time.time()), args.out / "log-a-step.txt")
        for r in _json_lines(res["stdout"]):
            got[r.get("variant")] = r
        for v in group:
            if v not in got or not got[v].get("ok"):
                why = got[v].get("error") if v in got else ("timed out" if res["timed_out"] else
                                                            f"failed (rc {res['rc']})")
                got[v] = {"variant": v, "fits": None, "error": why}
                sec.say(f"- {v}: {why}\n{_tail(res)}")
    rows = []
    for variant, label in VARIANTS:
        rows.append(got[variant] | {"label": label})
    sec.data["rows"] = rows
    done = [r for r in rows if r.get("fits") is not None]
    if done:
        r0 = done[0]
        where = r0.get("gpu", "CPU")
        total = f" ({r0['gpu_total_gib']:.0f} GiB)" if r0.get("gpu_total_gib") else ""
        info = (f"{where}{total}, {_count(r0['params_b'] * 1e9)} parameters, {'weights' if not args.cpu else 'RSS after build'} {_f(r0['weights_gib'])} GiB, "
                f"attention {r0['attn']}, micro batch {r0['batch']} x {r0['seq']} tokens, bf16 autocast, "
                f"{r0['masked_vectors']} masked value vectors (10%), median of {r0['timed_steps']} steps")
        sec.say(info)
        sec.summary.append(info)
    mem = "peak GPU mem" if not args.cpu else "peak RSS"
    table = [f"| variant | step (s) | tokens/s | {mem} (GiB) | peak over weights (GiB) | grad+opt (GiB) | trainable |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("fits") is None:
            table.append(f"| {r['label']} | {r['error']} | | | | | |")
        elif not r["fits"]:
            table.append(f"| {r['label']} | does not fit ({r['error'][:60]}) | | {_f(r['peak_gib'])} | | | "
                         f"{_count(r.get('trainable'))} |")
        else:
            table.append(f"| {r['label']} | {_f(r['step_s'], 3)} | {_f(r['tokens_per_s'], 0)} | {_f(r['peak_gib'])} | "
                         f"{_f(r['peak_over_start_gib'])} | {_f(r['grad_opt_gib'], 3)} | {_count(r['trainable'])} |")
    for line in table:
        sec.say(line)
    ours = next((r for r in rows if r["variant"] == "ours" and r.get("fits")), None)
    if ours:
        ok80 = ours["peak_gib"] is not None and ours["peak_gib"] * GIB < 80e9
        checks = f"finite weights {ours['finite']}, deltas moved {ours.get('deltas_moved')}"
        claim = (f"claim '8B masked unlearning on one 80 GB GPU': peak {_f(ours['peak_gib'])} GiB -> "
                 f"{'HOLDS' if ok80 else 'does NOT hold'} at micro batch {ours['batch']} x {ours['seq']}"
                 if not args.cpu else "claim check: only on a GPU (dry run)")
        sec.say(f"{claim}; {checks}")
        sec.summary.append(claim)
    sec.summary += table
    failed = [r for r in rows if r.get("fits") is None]
    sec.status = "ok" if not failed else f"{len(failed)} of {len(rows)} variants failed"


# ============================================================================ (b) demo


def parse_markdown_demo_table(text: str) -> dict[str, list[str]]:
    """{METHOD: [AUES Oracle, AUES Random, p, MU95 Oracle, MU95 Random, p]} from the first Markdown table
    whose header starts with `| method | AUES Oracle |` (the README's demo table). Columns are found by their
    header (each p is the first `p ...` column after its Random column), so extra columns (MDD) are skipped."""
    rows, pick = {}, None
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.strip().startswith("|") else None
        if cells and cells[:2] == ["method", "AUES Oracle"]:
            def after(name):
                i = cells.index(name)
                return [i, i + 1, next(j for j in range(i + 2, len(cells)) if cells[j].startswith("p"))]
            pick = after("AUES Oracle") + after("MU95 Oracle")
            continue
        if pick:
            if not cells:
                if rows:
                    break
                continue
            if set("".join(cells)) <= set("-: "):
                continue
            rows[cells[0].upper()] = [cells[i] for i in pick]
    return rows


def demo_rows_from_results(res: dict) -> dict[str, list[str]]:
    """The same cells from a controlled study's results.json (its `tests`), formatted like the README."""
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


def load_cpu_table(path: str | None) -> tuple[dict, str]:
    p = Path(path) if path else ROOT / "README.md"
    if not p.is_file():
        return {}, f"{p} (not found)"
    if p.suffix == ".json":
        return demo_rows_from_results(json.loads(p.read_text())), str(p)
    return parse_markdown_demo_table(p.read_text()), str(p)


def side_by_side(cpu: dict, gpu: dict | None, gpu_label: str) -> list[str]:
    lines = ["| method | run | AUES Oracle | AUES Random | p (paired t) | MU95 Oracle | MU95 Random | p (paired t) |",
             "|---|---|---|---|---|---|---|---|"]
    for m in list(dict.fromkeys([*cpu, *(gpu or {})])):
        if m in cpu:
            lines.append(f"| {m} | CPU | " + " | ".join(cpu[m]) + " |")
        if gpu is not None:
            lines.append(f"| {m} | {gpu_label} | " + " | ".join(gpu.get(m, ["n/a"] * 6)) + " |")
    return lines


def demo_command(runs_dir: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "loc_unlearn.cli", "demo", f"runs_dir={runs_dir}", *overrides]


def validate_overrides(overrides: list[str]) -> None:
    """The overrides parse into a valid Config (what the CLI checks before any work)."""
    sys.path.insert(0, str(ROOT / "src"))
    from loc_unlearn.config import build_config

    build_config(overrides=overrides)  # parses and validates (Config.validate), like the CLI


def section_demo(args, sec: Section, deadline: float) -> None:
    cpu, src = load_cpu_table(args.cpu_table)
    overrides = DEMO_BF16 + args.demo_override
    runs = Path(tempfile.mkdtemp(prefix="gpu-check-demo-"))
    cmd = demo_command(runs, overrides)
    sec.say(f"command: loc-unlearn demo runs_dir={runs} {' '.join(overrides)}")
    sec.say(f"CPU table from {src} ({len(cpu)} methods)")
    validate_overrides([f"runs_dir={runs}", *overrides])
    if args.cpu and "demo" not in args.sections_explicit:
        sec.say("demo: SKIPPED in the --cpu dry run (the full demo takes minutes); overrides validated. "
                "Run on a GPU: bash benchmarks/gpu_check.sh")
        for line in side_by_side(cpu, None, ""):
            sec.say(line)
        sec.status = "skipped (dry run)"
        sec.summary.append("skipped in the --cpu dry run")
        shutil.rmtree(runs, ignore_errors=True)
        return
    res = run_proc(cmd, min(args.demo_limit, deadline - time.time()), args.out / "log-b-demo.txt")
    found = sorted(runs.glob("study-controlled/*/results.json"))
    label = f"{'GPU' if not args.cpu else 'CPU'} bf16"
    if res["rc"] != 0 or not found:
        sec.status = "timed out" if res["timed_out"] else f"failed (rc {res['rc']})"
        sec.say(f"demo {sec.status} after {res['s']:.0f} s; stages completed: "
                + ", ".join(sorted({p.parent.parent.name for p in runs.glob("*/*/manifest.json")})))
        sec.say(_tail(res, 12))
        sec.summary.append(f"demo ({label}): {sec.status} after {res['s']:.0f} s")
        return
    r = json.loads(found[-1].read_text())
    gpu = demo_rows_from_results(r)
    table = side_by_side(cpu, gpu, label)
    for line in table:
        sec.say(line)
    inj = ", ".join(f"seed {i['seed']} ES {i['forget_es']:.2f}/{i['target_es']:.2f}"
                    f"{'' if i['reached'] else ' NOT reached'}" for i in r.get("injection", []))
    loc = ", ".join(f"{c['method']} {c['precision']:.2f}" for c in r.get("localization_check", []))
    extra = [f"injection (forget ES / target): {inj}", f"localization precision: {loc or 'n/a'}",
             f"demo wall time {res['s']:.0f} s (study elapsed {r.get('elapsed_s', float('nan')):.0f} s)"]
    for line in extra:
        sec.say(line)
    sec.summary += [f"demo {label} ({' '.join(overrides)}), CPU rows from {Path(src).name}:", *table, *extra]
    sec.data = {"gpu": gpu, "cpu": cpu, "wall_s": res["s"]}
    sec.status = "ok"
    shutil.rmtree(runs, ignore_errors=True)


# ============================================================================ (c) fsdp


def parse_inject_output(text: str) -> dict:
    """`loc-unlearn inject` prints `theta_o: PATH` and `mask: PATH`."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(theta_o|mask):\s+(\S.*)$", line.strip())
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def fsdp_commands(runs: Path, theta_o: str, mask: str, theta_r: str, overrides: list[str]) -> dict[str, list[str]]:
    args = ["unlearn", f"model={theta_o}", f"mask={mask}", f"reference={theta_r}", "method=npo", *overrides]
    return {"plain": [sys.executable, "-m", "loc_unlearn.cli", *args, f"runs_dir={runs / 'plain'}"],
            "fsdp": [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG),
                     "--num_processes", "1", "-m", "loc_unlearn.cli", *args, f"runs_dir={runs / 'fsdp'}"]}


def _unlearn_run(runs_dir: Path):
    runs = [d for d in sorted((runs_dir / "unlearn").glob("*")) if (d / "manifest.json").is_file()]
    return runs[-1] if runs else None


def section_fsdp(args, sec: Section, deadline: float) -> None:
    import yaml

    acfg = yaml.safe_load(FSDP_CONFIG.read_text())
    sec.say(f"accelerate config {FSDP_CONFIG.relative_to(ROOT)}: distributed_type {acfg.get('distributed_type')}, "
            f"{acfg.get('fsdp_config', {}).get('fsdp_sharding_strategy')}, run with --num_processes 1")
    sec.say("note: train/loop.py never calls accelerator.prepare(model) (it all-reduces the deltas itself), so this "
            "checks that a stage runs under the FSDP launcher and matches a plain run; the weights are not sharded")
    runs = Path(tempfile.mkdtemp(prefix="gpu-check-fsdp-"))
    overrides = FSDP_SMALL + args.fsdp_override
    validate_overrides([f"runs_dir={runs}", *overrides])
    cmds = fsdp_commands(runs, "THETA_O", "MASK", "THETA_R", overrides)
    if args.cpu and "fsdp" not in args.sections_explicit:
        sec.say("fsdp: SKIPPED in the --cpu dry run (no GPU); commands built: " + " ".join(cmds["fsdp"][1:6]) + " ...")
        sec.status = "skipped (dry run)"
        sec.summary.append("skipped in the --cpu dry run")
        shutil.rmtree(runs, ignore_errors=True)
        return
    log = args.out / "log-c-fsdp.txt"
    prep = run_proc([sys.executable, "-m", "loc_unlearn.cli", "inject", f"runs_dir={runs / 'prep'}", *overrides],
                    min(args.fsdp_limit, deadline - time.time()), log)
    paths = parse_inject_output(prep["stdout"])
    theta_r = sorted(d / "model" for d in (runs / "prep" / "finetune").glob("*") if (d / "manifest.json").is_file())
    if prep["rc"] != 0 or "theta_o" not in paths or not theta_r:
        sec.status = "timed out" if prep["timed_out"] else f"failed (rc {prep['rc']})"
        sec.say(f"prerequisite `loc-unlearn inject` {sec.status}\n{_tail(prep, 10)}")
        sec.summary.append(f"fsdp: prerequisite inject {sec.status}")
        return
    sec.say(f"theta_o from `loc-unlearn inject` in {prep['s']:.0f} s")
    cmds = fsdp_commands(runs, paths["theta_o"], paths["mask"], str(theta_r[-1]), overrides)
    got = {}
    for name in ("plain", "fsdp"):
        res = run_proc(cmds[name], min(args.fsdp_limit, deadline - time.time()), log)
        run = _unlearn_run(runs / name)
        if res["rc"] != 0 or run is None:
            st = "timed out" if res["timed_out"] else f"failed (rc {res['rc']})"
            sec.say(f"{name} unlearn {st}\n{_tail(res, 10)}")
            got[name] = None
            continue
        got[name] = run
        met = json.loads((run / "metrics.json").read_text())
        traj = "; ".join(f"step {p['step']} FS {p['FS']:.3f} RS {p['RS']:.3f}" for p in met["trajectory"])
        sec.say(f"{name:5s} ({res['s']:.0f} s): {traj}; AUES {met['aues']:.3f}")
    if not (got.get("plain") and got.get("fsdp")):
        sec.status = "failed"
        sec.summary.append("fsdp: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in got.items()))
        return
    import torch
    from safetensors.torch import load_file

    mp, mf = (json.loads((got[k] / "metrics.json").read_text()) for k in ("plain", "fsdp"))
    dtraj = max(abs(a[k] - b[k]) for a, b in zip(mp["trajectory"], mf["trajectory"]) for k in ("FS", "RS"))
    cks = {k: sorted((got[k] / "train").glob("ckpt-*"), key=lambda p: int(p.name.split("-")[1])) for k in got}
    dp, df = (load_file(str(cks[k][-1] / "delta.safetensors")) for k in ("plain", "fsdp"))
    ddelta = max(float((dp[n].float() - df[n].float()).abs().max()) for n in dp if n.startswith("delta."))
    size = max(float(dp[n].float().abs().max()) for n in dp if n.startswith("delta."))
    same_idx = all(torch.equal(dp[n], df[n]) for n in dp if n.startswith("idx."))
    line = (f"FSDP launch (1 process) vs plain: trajectory max |dFS|,|dRS| {dtraj:.2e}; final deltas max |diff| "
            f"{ddelta:.2e} (largest delta {size:.2e}); same masked columns {same_idx}")
    sec.say(line)
    sec.summary.append(line)
    sec.status = "ok" if same_idx and len(mp["trajectory"]) == len(mf["trajectory"]) else "mismatch"
    shutil.rmtree(runs, ignore_errors=True)


# ============================================================================ main


SECTIONS = {"step": ("a", "masked unlearning step at Llama-3.1-8B shape", section_step),
            "demo": ("b", "tiny demo, bf16, next to the CPU table", section_demo),
            "fsdp": ("c", "masked unlearning under the FSDP accelerate config, 1 process", section_fsdp)}


def _run_section(name, args, deadline) -> Section:
    key, title, fn = SECTIONS[name]
    sec = Section(key, title + (" [--cpu dry run: tiny shapes]" if args.cpu and name == "step" else ""))
    try:
        fn(args, sec, deadline)
    except Exception as e:  # one section's failure must not lose the others
        import traceback

        sec.status = f"error: {type(e).__name__}: {e}"
        sec.say("    " + traceback.format_exc().strip().replace("\n", "\n    ")[-3000:])
        sec.summary.append(f"({key}) error: {type(e).__name__}: {e}")
    return sec


def header(args) -> list[str]:
    """Versions without importing the packages (the parent stays light; the GPU name comes from (a))."""
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
    ap.add_argument("--cpu", action="store_true", help="dry run: tiny shapes on the CPU; demo and fsdp skipped")
    ap.add_argument("--sections", default="", help="comma list of step,demo,fsdp (default: all)")
    ap.add_argument("--cpu-table", default=None, help="CPU demo table: results.json or Markdown (default README.md)")
    ap.add_argument("--out", default=None, help="folder for summary.md, results.json, logs (default $OUT or runs/gpu-check)")
    ap.add_argument("--budget-s", type=float, default=470.0, help="wall-clock budget of the whole check")
    ap.add_argument("--step-limit", type=float, default=100.0, help="time limit per step variant (s)")
    ap.add_argument("--demo-limit", type=float, default=330.0, help="time limit of the demo (s)")
    ap.add_argument("--fsdp-limit", type=float, default=240.0, help="time limit of each fsdp sub-run (s)")
    ap.add_argument("--demo-override", action="append", default=[], help="extra key=value for the demo")
    ap.add_argument("--fsdp-override", action="append", default=[], help="extra key=value for (c)")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--child-step", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_step:
        for v in args.child_step.split(","):
            args.variant = v
            print(json.dumps(child_step(args)), flush=True)
        return 0
    t_start = time.time()
    deadline = t_start + args.budget_s
    args.sections_explicit = [s for s in args.sections.split(",") if s]
    names = args.sections_explicit or list(SECTIONS)
    bad = [n for n in names if n not in SECTIONS]
    if bad:
        ap.error(f"unknown sections {bad}; known: {', '.join(SECTIONS)}")
    args.out = Path(args.out or os.environ.get("OUT") or ROOT / "runs" / "gpu-check")
    args.out.mkdir(parents=True, exist_ok=True)
    for f in args.out.glob("log-*.txt"):
        f.unlink()
    head = header(args)
    print("\n".join(head), flush=True)
    done: dict[str, Section] = {}
    if "step" in names:  # alone: its timings must not share the GPU
        done["step"] = _run_section("step", args, deadline)
        print(done["step"].text(), flush=True)
    rest = [n for n in names if n != "step"]
    threads = {n: threading.Thread(target=lambda n=n: done.__setitem__(n, _run_section(n, args, deadline)))
               for n in rest}
    for n, t in threads.items():
        print(f"[started section {SECTIONS[n][0]} ({n})]", flush=True)
        t.start()
    for n in rest:
        threads[n].join()
        print(done[n].text(), flush=True)
    total = time.time() - t_start
    summary = ["### GPU check (benchmarks/gpu_check.sh)", "", *[f"{h}  " for h in head], ""]
    for n in names:
        s = done[n]
        summary += [f"**({s.key}) {s.title}** ({s.status})", "", *s.summary, ""]
    summary.append(f"total {total:.0f} s (budget {args.budget_s:.0f} s)")
    block = "\n".join(summary)
    print("=" * 30 + " summary for benchmarks/RESULTS.md " + "=" * 30)
    print(block)
    print("=" * 95)
    (args.out / "summary.md").write_text(block + "\n")
    (args.out / "results.json").write_text(json.dumps(
        {"header": head, "total_s": total, "sections": {n: {"status": done[n].status, "data": done[n].data,
                                                            "lines": done[n].lines} for n in names}},
        indent=1, default=str))
    print(f"written: {args.out / 'summary.md'}, {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
