"""benchmarks/gpu_check.py cannot rot: its `--cpu` dry run (tiny shapes, CPU) exits 0 and prints every section
and the summary block with numbers; the parsers that the GPU-only sections use are checked on fixed inputs."""
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    env = {**os.environ, "LOC_UNLEARN_QUIET": "1", "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    p = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--out", str(out), "--budget-s", "240"],
                       capture_output=True, text=True, timeout=300, env=env, cwd=str(ROOT))
    return p, out


def test_dry_run_exits_0_and_prints_every_section(dry_run):
    p, out = dry_run
    assert p.returncode == 0, p.stderr[-3000:] + p.stdout[-3000:]
    text = p.stdout
    for header in ("## (a) masked unlearning step", "## (b) tiny demo", "## (c) masked unlearning under the FSDP",
                   "summary for benchmarks/RESULTS.md"):
        assert header in text, header
    assert "[section a: ok" in text
    assert "demo: SKIPPED in the --cpu dry run" in text and "fsdp: SKIPPED in the --cpu dry run" in text
    for label in ("ours: MaskedDelta (10% mask)", "(ii) all of W_down, grad * mask", "(iii) all parameters, grad masks"):
        # step time, tokens/s and peak memory are numbers
        assert re.search(rf"\| {re.escape(label)} \| \d+\.\d+ \| \d+ \| \d+\.\d+ \|", text), label
    assert "deltas moved True" in text and "finite weights True" in text
    # the README's CPU demo table is found and printed
    assert re.search(r"\| WGA \| CPU \| 0\.\d+ ± 0\.\d+ \|", text)
    summary = (out / "summary.md").read_text()
    assert "### GPU check" in summary and "| ours: MaskedDelta (10% mask) |" in summary
    res = json.loads((out / "results.json").read_text())
    assert res["sections"]["step"]["status"] == "ok"
    rows = {r["variant"]: r for r in res["sections"]["step"]["data"]["rows"]}
    assert set(rows) == {"ours", "wdown_gm", "all_gm"} and all(r["fits"] for r in rows.values())
    assert rows["ours"]["trainable"] < rows["wdown_gm"]["trainable"] < rows["all_gm"]["trainable"]


def test_readme_and_results_tables(gc, tmp_path):
    cpu = gc.parse_markdown_demo_table((ROOT / "README.md").read_text())
    assert set(cpu) == {"WGA", "NPO", "DPO", "RMU"} and all(len(v) == 6 for v in cpu.values())
    # the README's NPO row (demo at d14da2d), as results.json holds it
    res = {"tests": [{"method": "npo", "metric": "aues", "oracle_mean": 0.905931, "oracle_std": 0.024861,
                      "random_mean": 0.897568, "random_std": 0.023438, "p_t": 0.018750},
                     {"method": "npo", "metric": "mu95", "oracle_mean": -0.352329, "oracle_std": 0.385911,
                      "random_mean": -0.568529, "random_std": 0.335218, "p_t": 0.599957}]}
    gpu = gc.demo_rows_from_results(res)
    assert gpu == {"NPO": ["0.906 ± 0.025", "0.898 ± 0.023", "0.02", "-0.35 ± 0.39", "-0.57 ± 0.34", "0.60"]}
    assert gpu["NPO"] == cpu["NPO"]  # same format as the README's
    (tmp_path / "r.json").write_text(json.dumps(res))
    assert gc.load_cpu_table(str(tmp_path / "r.json"))[0] == gpu
    lines = gc.side_by_side(cpu, gpu, "GPU bf16")
    assert "| NPO | GPU bf16 | 0.906 ± 0.025 |" in "\n".join(lines)
    assert "| WGA | GPU bf16 | n/a |" in "\n".join(lines)


def test_fsdp_helpers(gc, tmp_path):
    text = "fine-tuned ...\ntheta_o: /r/inject/abc/model\nmask: /r/inject/abc/mask.safetensors\nforget ES 1.0"
    assert gc.parse_inject_output(text) == {"theta_o": "/r/inject/abc/model", "mask": "/r/inject/abc/mask.safetensors"}
    cmds = gc.fsdp_commands(tmp_path, "TO", "M", "TR", ["unlearn.train.epochs=1"])
    assert cmds["fsdp"][1:4] == ["-m", "accelerate.commands.launch", "--config_file"]
    assert Path(cmds["fsdp"][4]).is_file() and "--num_processes" in cmds["fsdp"]
    assert cmds["plain"][1:4] == ["-m", "loc_unlearn.cli", "unlearn"]
    tail = lambda c: [a for a in c if "runs_dir=" not in a][-7:]  # noqa: E731
    assert tail(cmds["plain"]) == tail(cmds["fsdp"])
    gc.validate_overrides(gc.FSDP_SMALL + gc.DEMO_BF16)  # the sections' overrides are valid config keys


def _args(gc, tmp_path, **kw):
    from types import SimpleNamespace

    base = dict(cpu=False, cpu_table=None, demo_override=[], fsdp_override=[], sections_explicit=[], demo_limit=60,
                fsdp_limit=60, step_limit=60, out=tmp_path, lr=1e-5)
    return SimpleNamespace(**(base | kw))


def _run_section(gc, tmp_path, monkeypatch, fake, letter: str, name: str):
    """Run gpu_check's section `name` with its processes replaced by `fake`: (section, its text)."""
    monkeypatch.setattr(gc, "run_proc", fake)
    sec = gc.Section(letter, name)
    getattr(gc, f"section_{name}")(_args(gc, tmp_path), sec, deadline=1e18)
    return sec, sec.text()


def _runs_dir(cmd) -> Path:
    return Path(next(a.split("=", 1)[1] for a in cmd if a.startswith("runs_dir=")))


def test_demo_section_gpu_path_with_a_fake_demo(gc, tmp_path, monkeypatch):
    """The GPU-only branch of (b), with `loc-unlearn demo` replaced by a writer of a results.json."""
    def fake(cmd, timeout, log=None, env=None, cwd=None):
        assert cmd[1:4] == ["-m", "loc_unlearn.cli", "demo"] and "model.dtype=bfloat16" in cmd
        d = _runs_dir(cmd) / "study-controlled" / "h"
        d.mkdir(parents=True)
        tests = [{"method": m, "metric": k, "oracle_mean": 0.5, "oracle_std": 0.1, "random_mean": 0.4,
                  "random_std": 0.1, "p_t": 0.3} for m in ("wga", "npo", "dpo", "rmu") for k in ("aues", "mu95")]
        (d / "results.json").write_text(json.dumps({
            "tests": tests, "elapsed_s": 12.0, "localization_check": [{"method": "random", "precision": 0.1}],
            "injection": [{"seed": 0, "forget_es": 1.0, "target_es": 0.9, "reached": True}]}))
        return {"rc": 0, "timed_out": False, "stdout": "", "stderr": "", "s": 12.0}

    sec, text = _run_section(gc, tmp_path, monkeypatch, fake, "b", "demo")
    assert sec.status == "ok", text
    assert "| WGA | CPU | 0.937 ± 0.018 |" in text and "| WGA | GPU bf16 | 0.500 ± 0.100 | 0.400 ± 0.100 | 0.30 |" in text
    assert "seed 0 ES 1.00/0.90" in text and any("GPU bf16" in s for s in sec.summary)


def test_fsdp_section_gpu_path_with_fake_runs(gc, tmp_path, monkeypatch):
    """The GPU-only branch of (c), with the CLI runs replaced by writers of what they leave behind."""
    import torch
    from safetensors.torch import save_file

    def fake(cmd, timeout, log=None, env=None, cwd=None):
        runs = _runs_dir(cmd)
        if "inject" in cmd:
            (runs / "finetune" / "f" / "model").mkdir(parents=True)
            (runs / "finetune" / "f" / "manifest.json").write_text("{}")
            return {"rc": 0, "timed_out": False, "stdout": f"theta_o: {runs}/inject/i/model\nmask: {runs}/m.st\n",
                    "stderr": "", "s": 3.0}
        assert "unlearn" in cmd and f"mask={runs.parent}/prep/m.st" in cmd
        if "accelerate.commands.launch" in cmd:
            assert cmd[cmd.index("--num_processes") + 1] == "1"
        d = runs / "unlearn" / "u"
        (d / "train" / "ckpt-2").mkdir(parents=True)
        (d / "manifest.json").write_text("{}")
        (d / "metrics.json").write_text(json.dumps({"aues": 0.5, "trajectory": [
            {"step": 0, "FS": 0.1, "RS": 0.9}, {"step": 2, "FS": 0.6, "RS": 0.8}]}))
        save_file({"idx.0": torch.tensor([1, 3]), "delta.0": torch.ones(4, 2) * 0.01},
                  str(d / "train" / "ckpt-2" / "delta.safetensors"))
        return {"rc": 0, "timed_out": False, "stdout": "", "stderr": "", "s": 2.0}

    sec, text = _run_section(gc, tmp_path, monkeypatch, fake, "c", "fsdp")
    assert sec.status == "ok", text
    assert "final deltas max |diff| 0.00e+00" in text and "same masked columns True" in text


def test_step_section_reports_oom_and_crashes_per_variant(gc, tmp_path, monkeypatch):
    """GPU mode: a fresh process per variant; one that runs out of memory says "does not fit", one that
    crashes is reported, and neither loses the others."""
    ok = {"ok": True, "fits": True, "device": "cuda", "batch": 4, "seq": 512, "timed_steps": 5, "params_b": 8.03,
          "attn": "sdpa", "weights_gib": 14.96, "masked_vectors": 45875, "trainable": 188e6, "step_s": 0.5,
          "tokens_per_s": 4096.0, "peak_gib": 30.0, "peak_over_start_gib": 15.0, "grad_opt_gib": 2.1,
          "finite": True, "deltas_moved": True, "gpu": "NVIDIA H200", "gpu_total_gib": 139.8}
    seen = []

    def fake(cmd, timeout, log=None, env=None, cwd=None):
        v = cmd[cmd.index("--child-step") + 1]
        seen.append(v)
        if v == "wdown_gm":
            return {"rc": -9, "timed_out": False, "stdout": "", "stderr": "Killed", "s": 1.0}
        r = ok | {"variant": v} | ({"fits": False, "error": "CUDA out of memory. Tried to allocate"} if v == "all_gm" else {})
        return {"rc": 0, "timed_out": False, "stdout": json.dumps(r) + "\n", "stderr": "", "s": 1.0}

    sec, text = _run_section(gc, tmp_path, monkeypatch, fake, "a", "step")
    assert seen == ["ours", "wdown_gm", "all_gm"]
    assert "| ours: MaskedDelta (10% mask) | 0.500 | 4096 | 30.00 |" in text
    assert "| (ii) all of W_down, grad * mask | failed (rc -9) |" in text
    assert "| (iii) all parameters, grad masks | does not fit (CUDA out of memory" in text
    assert "peak 30.00 GiB -> HOLDS" in text and sec.status == "1 of 3 variants failed"
