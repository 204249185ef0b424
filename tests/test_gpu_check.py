"""benchmarks/gpu_check.py cannot rot: its `--cpu` dry run (tiny shapes, CPU; (d) as FSDP2 over 2 gloo processes)
exits 0, prints every section and ONE table whose numbers come from the check itself; the GPU-only branches
run here with their processes replaced by fakes that leave behind what the real ones write. Nothing here
reads the README or benchmarks/RESULTS.md."""
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


def _table_rows(text: str, key: str) -> list[list[str]]:
    """The one table's rows of section `key` ('a'..'d'), as cells."""
    return [[c.strip() for c in line.strip().strip("|").split(" | ")][1:]
            for line in text.splitlines() if line.startswith(f"| ({key}) |")]


def test_dry_run_exits_0_and_prints_every_section(dry_run, gc):
    p, out = dry_run
    assert p.returncode == 0, p.stderr[-3000:] + p.stdout[-3000:]
    text = p.stdout
    for header in ("## (a) masked unlearning step", "## (b) evaluation at Llama-3.1-8B shape",
                   "## (c) shortened demo with device=auto", "## (d) masked unlearning under FSDP2",
                   "summary for benchmarks/RESULTS.md"):
        assert header in text, header
    for key in "abd":
        assert f"[section {key}: ok" in text, key
    assert "demo: SKIPPED in the --cpu dry run" in text
    # ONE table, in the summary, with rows of every section
    summary = (out / "summary.md").read_text()
    assert summary.count("| section | case | measured | plan / reference | result |") == 1
    assert text.count("| section | case | measured | plan / reference | result |") == 1
    for key in "abcd":
        assert _table_rows(summary, key), key

    # (a): measured numbers per variant, the plan's next to them where it has a case
    res = json.loads((out / "results.json").read_text())
    a = {r[0]: r for r in _table_rows(summary, "a")}
    for v, label in gc.VARIANTS:
        assert re.match(r"\d+\.\d+ s/step \(\d+ tok/s\), peak RSS \d+\.\d+ GiB", a[label][1]), a[label]
        assert a[label][3].startswith("ok"), a[label]
        assert (a[label][2].startswith("plan ") and "MiB" in a[label][2]) == (v in gc.PLAN_MODE), a[label]
    assert "deltas moved True" in text and "finite weights True" in text and "MaskedDownProj modules 2" in text
    rows = {r["variant"]: r for r in res["sections"]["step"]["data"]["rows"]}
    assert set(rows) == {"ours", "wdown_gm", "all_gm"} and all(r["fits"] for r in rows.values())
    assert rows["ours"]["trainable"] < rows["wdown_gm"]["trainable"] < rows["all_gm"]["trainable"]
    # the plan's numbers are loc_unlearn.plan's (train_row at the dry run's shape and micro batch)
    plan = gc.step_plan(gc.TINY_SHAPE, *gc.step_batch(True))
    for v in gc.PLAN_MODE:
        assert rows[v]["plan"]["total"] == pytest.approx(plan[v]["total"])
    assert rows["wdown_gm"]["plan"] is None and plan["ours"]["total"] < plan["all_gm"]["total"]

    # (b): token_metrics and the bare loop both timed over the same batches, on the CPU here
    b = res["sections"]["eval"]
    assert b["status"] == "ok"
    d = b["data"]
    assert d["model_device"] == "cpu" and d["es_rows"] == d["rows"] == 16 and d["finite"]
    assert d["metrics_s"] > 0 and d["bare_s"] > 0 and d["ratio"] == pytest.approx(d["metrics_s"] / d["bare_s"])
    assert d["padded_tokens"] >= d["tokens"] and d["plan_gib"] > 0
    (brow,) = _table_rows(summary, "b")
    assert re.match(r"\d+\.\d+ s vs \d+\.\d+ s, ratio \d+\.\d+", brow[1]) and brow[3].startswith("ok"), brow

    # (c): skipped in the dry run, with a table row saying so
    assert res["sections"]["demo"]["status"] == "skipped (dry run)"

    # (d): FSDP2 over 2 gloo processes equals the run without an engine, engines recorded, every stage on the CPU
    f = res["sections"]["fsdp"]
    assert f["status"] == "ok", "\n".join(f["lines"])
    c = f["data"]["float32"]
    assert (c["engine_plain"], c["engine_fsdp"]) == ("none", "fsdp2") and c["same_idx"]
    assert c["rel"] <= gc.FSDP_REL_TOL and c["dtraj"] <= gc.FSDP_REL_TOL and c["size"] > 0
    drows = {r[0]: r for r in _table_rows(summary, "d")}
    assert drows["float32: FSDP2 (2 processes) vs no engine"][3].startswith("equal")
    assert re.search(r"\d+ stages \(\d+ runs\) on cpu", drows["stage devices of these runs"][1])
    assert re.search(r"^  unlearn -> cpu float32 x2$", text, re.M)


def test_plan_numbers_are_the_plans(gc):
    """(a)'s plan column at the 8B shape is loc_unlearn.plan.train_row's, and says what the README claims."""
    from loc_unlearn import plan as P
    from loc_unlearn.config import TrainConfig

    got = gc.step_plan(gc.LLAMA_8B, 4, 512)
    arch = gc._arch(gc.LLAMA_8B)
    assert arch.n_params == pytest.approx(8.03e9, rel=1e-3)  # Llama-3.1-8B
    tc = TrainConfig(batch_size=4, micro_batch_size=4, max_length=512, mixed_precision="bf16")
    row = P.train_row(arch, P.TrainSpec("u", "", "masked", tc, 1, 0.1), 2, "none", 1)
    assert got["ours"]["total"] * gc.GIB == pytest.approx(row.total)
    assert got["ours"]["weights"] == pytest.approx((arch.n_params * 2 + 4 * 4096 * round(0.1 * 32 * 14336)) / gc.GIB)
    assert got["wdown_gm"] is None
    assert got["ours"]["total"] * gc.GIB < 80e9 < got["all_gm"]["total"] * gc.GIB + 80e9
    assert got["all_gm"]["optim"] == pytest.approx(2 * got["all_gm"]["grads"])
    assert gc.eval_plan(gc.LLAMA_8B, 32, 128) > got["ours"]["weights"] - 1


def test_tokenizer_and_rows_for_the_8b_shape(gc):
    """(b)'s tokenizer: ids below the 8B vocabulary, plain QA prompts, answers of different lengths."""
    from loc_unlearn.data.formatting import encode_fit

    tok = gc.word_tokenizer(4000)
    st = gc.eval_setup(False)
    rows = gc.synthetic_rows(st["rows"], 4000, st["q_words"], st["a_words"])
    items = [encode_fit(tok, r["question"], r["answer"])[0] for r in rows[:32]]
    assert max(max(it["input_ids"]) for it in items) < gc.LLAMA_8B["vocab_size"]
    assert all(it["n_answer"] >= st["a_words"][0] for it in items)
    assert len({len(it["input_ids"]) for it in items}) > 5
    assert tok.convert_ids_to_tokens(items[0]["input_ids"][0]) == "Question:"


def test_results_table_helpers(gc):
    res = {"tests": [{"method": "npo", "metric": "aues", "oracle_mean": 0.905931, "oracle_std": 0.024861,
                      "random_mean": 0.897568, "random_std": 0.023438, "p_t": 0.018750},
                     {"method": "npo", "metric": "mu95", "oracle_mean": -0.352329, "oracle_std": 0.385911,
                      "random_mean": -0.568529, "random_std": 0.335218, "p_t": 0.599957}]}
    gpu = gc.demo_rows_from_results(res)
    assert gpu == {"NPO": ["0.906 ± 0.025", "0.898 ± 0.023", "0.02", "-0.35 ± 0.39", "-0.57 ± 0.34", "0.60"]}
    twin = json.loads(json.dumps(res))
    twin["tests"][0]["random_mean"] += 0.01
    twin["tests"][1]["oracle_mean"] -= 0.2
    d = gc.max_mean_diff(res, twin)
    assert d["aues"] == pytest.approx(0.01) and d["mu95"] == pytest.approx(0.2)
    lines = "\n".join(gc.side_by_side(gc.demo_rows_from_results(twin), gpu, "cuda bf16", "cpu bf16 (twin)"))
    assert "| NPO | cuda bf16 | 0.906 ± 0.025 |" in lines and "| NPO | cpu bf16 (twin) | 0.906 ± 0.025 | 0.908" in lines
    assert "| NPO | cuda bf16 |" in "\n".join(gc.side_by_side(None, gpu, "cuda bf16"))


def test_stage_devices(gc, tmp_path):
    def put(stage, h, **m):
        (tmp_path / stage / h).mkdir(parents=True)
        (tmp_path / stage / h / "metrics.json").write_text(json.dumps(m))

    put("data", "d", rows=3)
    put("finetune", "f", device="cuda", dtype="bfloat16")
    put("unlearn", "u1", device="cuda", dtype="bfloat16")
    put("unlearn", "u2", device="cuda", dtype="bfloat16")
    (tmp_path / "unlearn" / "u1" / "train" / "ckpt-1").mkdir(parents=True)  # deeper metrics are not runs
    (tmp_path / "unlearn" / "u1" / "train" / "ckpt-1" / "metrics.json").write_text(json.dumps({"device": "cpu"}))
    devs = gc.stage_devices(tmp_path)
    assert gc.device_lines(devs) == ["data -> no model", "finetune -> cuda bfloat16", "unlearn -> cuda bfloat16 x2"]
    text, ok = gc.device_summary(devs, "cuda")
    assert ok and text == "2 stages (3 runs) on cuda (bfloat16); no model: data"
    put("evaluate", "e", device="cpu", dtype="float32")
    devs = gc.stage_devices(tmp_path)
    assert gc.off_device(devs, "cuda") == ["evaluate"]
    assert gc.device_summary(devs, "cuda") == ("3 stages (4 runs) NOT all on cuda: evaluate (bfloat16/float32); "
                                               "no model: data", False)


def test_fsdp_helpers(gc, tmp_path):
    text = "fine-tuned ...\ntheta_o: /r/inject/abc/model\nmask: /r/inject/abc/mask.safetensors\nforget ES 1.0"
    assert gc.parse_inject_output(text) == {"theta_o": "/r/inject/abc/model", "mask": "/r/inject/abc/mask.safetensors"}
    cmds = gc.fsdp_commands(tmp_path, "TO", "M", "TR", ["unlearn.train.epochs=1"])
    assert cmds["fsdp"][1:4] == ["-m", "accelerate.commands.launch", "--config_file"]
    assert Path(cmds["fsdp"][4]) == gc.FSDP_CONFIG and cmds["fsdp"][cmds["fsdp"].index("--num_processes") + 1] == "1"
    cpu = gc.fsdp_commands(tmp_path, "TO", "M", "TR", [], gc.FSDP_CPU_CONFIG, 2)
    assert Path(cpu["fsdp"][4]).is_file() and cpu["fsdp"][cpu["fsdp"].index("--num_processes") + 1] == "2"
    assert cmds["plain"][1:4] == ["-m", "loc_unlearn.cli", "unlearn"]
    tail = lambda c: [a for a in c if "runs_dir=" not in a][-7:]  # noqa: E731
    assert tail(cmds["plain"]) == tail(cmds["fsdp"])
    import yaml

    for cfg in (gc.FSDP_CONFIG, gc.FSDP_CPU_CONFIG):  # the shipped configs are FSDP2
        y = yaml.safe_load(cfg.read_text())
        assert y["distributed_type"] == "FSDP" and y["fsdp_config"]["fsdp_version"] == 2
    # the sections' overrides are valid config keys
    gc.validate_overrides(gc.FSDP_SMALL + gc.FSDP_BF16)
    gc.validate_overrides(gc.FSDP_SMALL + gc.CPU_MINI_MODEL)
    gc.validate_overrides(gc.DEMO_SHORT + ["device=auto"])


def _args(gc, tmp_path, **kw):
    from types import SimpleNamespace

    base = dict(cpu=False, demo_override=[], fsdp_override=[], sections_explicit=[], demo_limit=60, eval_limit=60,
                fsdp_limit=60, step_limit=60, out=tmp_path, lr=1e-5, no_cpu_twin=False)
    return SimpleNamespace(**(base | kw))


def _run_section(gc, tmp_path, monkeypatch, fake, letter: str, name: str, **kw):
    """Run gpu_check's section `name` with its processes replaced by `fake`: (section, its text, its table)."""
    monkeypatch.setattr(gc, "run_proc", fake)
    sec = gc.Section(letter, name)
    getattr(gc, f"section_{name}")(_args(gc, tmp_path, **kw), sec, deadline=1e18)
    return sec, sec.text(), "\n".join(gc.one_table([sec]))


def _runs_dir(cmd) -> Path:
    return Path(next(a.split("=", 1)[1] for a in cmd if a.startswith("runs_dir=")))


def _ok(s=2.0, stdout=""):
    return {"rc": 0, "timed_out": False, "stdout": stdout, "stderr": "", "s": s}


def _metrics(d: Path, **m):
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text("{}")
    (d / "metrics.json").write_text(json.dumps(m))


@pytest.mark.parametrize("evaluate_on", ["cuda", "cpu"])
def test_demo_section_gpu_path_with_a_fake_demo(gc, tmp_path, monkeypatch, evaluate_on):
    """The GPU branch of (c): `loc-unlearn demo` device=auto and its device=cpu twin replaced by writers of
    a results.json and per-stage metrics; a stage that ran on the CPU fails the section."""
    seen = {}

    def fake(cmd, timeout, log=None, env=None, cwd=None):
        assert cmd[1:4] == ["-m", "loc_unlearn.cli", "demo"] and "model.dtype=bfloat16" in cmd
        dev = "cuda" if "device=auto" in cmd else "cpu"
        if dev == "cpu":
            assert "device=cpu" in cmd and env["CUDA_VISIBLE_DEVICES"] == ""
        seen[dev] = cmd
        runs = _runs_dir(cmd)
        d = runs / "study-controlled" / "h"
        shift = 0.0 if dev == "cuda" else 0.01
        tests = [{"method": m, "metric": k, "oracle_mean": 0.5 + shift, "oracle_std": 0.1, "random_mean": 0.4,
                  "random_std": 0.1, "p_t": 0.3} for m in ("wga", "npo", "dpo", "rmu") for k in ("aues", "mu95")]
        _metrics(d, n=1)
        (d / "results.json").write_text(json.dumps({
            "tests": tests, "elapsed_s": 12.0, "injection": [{"seed": 0, "forget_es": 1.0, "target_es": 0.9,
                                                              "reached": True}]}))
        _metrics(runs / "data" / "x", rows=1)
        _metrics(runs / "base" / "b", device=dev, dtype="float32")
        for i in range(3):
            _metrics(runs / "unlearn" / f"u{i}", device=dev, dtype="bfloat16")
        _metrics(runs / "evaluate" / "e", device=evaluate_on if dev == "cuda" else "cpu", dtype="bfloat16")
        return _ok(12.0)

    sec, text, table = _run_section(gc, tmp_path, monkeypatch, fake, "c", "demo")
    assert set(seen) == {"cuda", "cpu"}
    assert "  unlearn -> cuda bfloat16 x3" in text and "  data -> no model" in text and "  base -> cuda float32" in text
    assert "| WGA | cuda bf16 | 0.500 ± 0.100 | 0.400 ± 0.100 | 0.30 |" in text
    assert "| WGA | cpu bf16 (twin) | 0.510 ± 0.100 |" in text
    assert "max |diff| of means AUES 0.010" in text
    if evaluate_on == "cuda":
        assert sec.status == "ok", text
        assert "3 stages (5 runs) on cuda (bfloat16/float32); no model: data, study-controlled" in table
        assert table.rstrip().endswith("| ok: every model stage on cuda |")
    else:
        assert sec.status == "stages not on cuda: evaluate", text
        assert "NOT all on cuda: evaluate" in table and table.rstrip().endswith("| NOT on cuda |")


def _fake_fsdp_runs(gc, engine_of_launch="fsdp2", diff=0.0):
    """A fake run_proc for (d): `inject` leaves theta_o/theta_r, each `unlearn` a run dir with metrics, a
    checkpoint's deltas and trainer_state.json (the engine); the launched run's deltas differ by `diff`."""
    import torch
    from safetensors.torch import save_file

    def fake(cmd, timeout, log=None, env=None, cwd=None):
        runs = _runs_dir(cmd)
        if "inject" in cmd:
            (runs / "finetune" / "f" / "model").mkdir(parents=True)
            _metrics(runs / "finetune" / "f", device="cuda", dtype="float32")
            return _ok(3.0, f"theta_o: {runs}/inject/i/model\nmask: {runs}/m.st\n")
        assert "unlearn" in cmd and f"mask={runs.parent.parent}/prep/m.st" in cmd
        launched = "accelerate.commands.launch" in cmd
        if launched:
            assert cmd[cmd.index("--num_processes") + 1] == "1"
            assert Path(cmd[cmd.index("--config_file") + 1]) == gc.FSDP_CONFIG
        bf16 = "model.dtype=bfloat16" in cmd
        d = runs / "unlearn" / "u"
        _metrics(d, aues=0.5, device="cuda", dtype="bfloat16" if bf16 else "float32", trajectory=[
            {"step": 0, "FS": 0.1, "RS": 0.9, "MU": 0.5}, {"step": 2, "FS": 0.6, "RS": 0.8, "MU": 0.5}])
        ck = d / "train" / "ckpt-2"
        ck.mkdir(parents=True)
        save_file({"idx.0": torch.tensor([1, 3]), "delta.0": torch.ones(4, 2) * 0.01 + (diff if launched else 0.0)},
                  str(ck / "delta.safetensors"))
        (ck / "trainer_state.json").write_text(json.dumps({"engine": engine_of_launch if launched else "none"}))
        return _ok()

    return fake


@pytest.mark.parametrize("engine,diff,status", [("fsdp2", 0.0, "ok"), ("none", 0.0, "mismatch"),
                                                ("fsdp2", 1e-3, "mismatch")])
def test_fsdp_section_gpu_path_with_fake_runs(gc, tmp_path, monkeypatch, engine, diff, status):
    """The GPU branch of (d): float32 and bf16 pairs; equal only within tolerance and with the engines recorded
    as none / fsdp2."""
    sec, text, table = _run_section(gc, tmp_path, monkeypatch, _fake_fsdp_runs(gc, engine, diff), "d", "fsdp")
    assert sec.status.startswith(status), text
    rows = {r[0]: r for r in sec.rows}
    f32, bf = rows["float32: FSDP2 (1 process) vs no engine"], rows["bf16: FSDP2 (1 process) vs no engine"]
    assert f"engines recorded: none / {engine}" in f32[2] and "devices cuda float32 / cuda float32" in f32[2]
    assert "devices cuda bfloat16 / cuda bfloat16" in bf[2] and bf[3].startswith("reported")
    if status == "ok":
        assert "final deltas max |diff| 0.00e+00" in f32[1] and f32[3] == f"equal (tol {gc.FSDP_REL_TOL:g})"
        assert rows["stage devices of these runs"][3] == "ok"
    elif diff:
        assert f32[3].startswith("NOT equal") and "relative 1.0e-01" in f32[1]
    else:
        assert "WRONG engine" in f32[3] and "WRONG engine" in bf[3]


def test_step_section_reports_oom_and_crashes_per_variant(gc, tmp_path, monkeypatch):
    """GPU mode: a fresh process per variant; one that runs out of memory says "does not fit", one that
    crashes is reported, and neither loses the others; the plan's total stands next to each measured peak."""
    ok = {"ok": True, "fits": True, "device": "cuda", "batch": 4, "seq": 512, "timed_steps": 5, "params_b": 8.03,
          "attn": "sdpa", "weights_gib": 14.96, "masked_vectors": 45875, "trainable": 188e6, "step_s": 0.5,
          "tokens_per_s": 4096.0, "peak_gib": 30.0, "peak_over_start_gib": 15.0, "grad_opt_gib": 2.1,
          "finite": True, "deltas_moved": True, "masked_modules": 32, "gpu": "NVIDIA H200", "gpu_total_gib": 139.8}
    seen = []

    def fake(cmd, timeout, log=None, env=None, cwd=None):
        v = cmd[cmd.index("--child-step") + 1]
        seen.append(v)
        if v == "wdown_gm":
            return {"rc": -9, "timed_out": False, "stdout": "", "stderr": "Killed", "s": 1.0}
        r = ok | {"variant": v} | ({"fits": False, "error": "CUDA out of memory. Tried to allocate"} if v == "all_gm" else {})
        return _ok(1.0, json.dumps(r) + "\n")

    sec, text, table = _run_section(gc, tmp_path, monkeypatch, fake, "a", "step")
    assert seen == ["ours", "wdown_gm", "all_gm"]
    plan = gc.step_plan(gc.LLAMA_8B, 4, 512)
    assert f"| ours: MaskedDelta (10% mask) | 0.500 | 4096 | 30.00 | {plan['ours']['total']:.2f} GiB |" in text
    assert "| (ii) all of W_down, grad * mask | failed (rc -9) |" in text
    assert "| (iii) all parameters, grad masks | does not fit (CUDA out of memory" in text
    assert "peak 30.00 GiB -> HOLDS" in text and sec.status == "1 of 3 variants failed"
    rows = {r[0]: r for r in sec.rows}
    ours = rows["ours: MaskedDelta (10% mask)"]
    assert ours[2] == f"plan {plan['ours']['total']:.2f} GiB; measured / plan {30.0 / plan['ours']['total']:.2f}"
    assert ours[3] == "ok; 80 GB claim HOLDS"
    assert rows["(ii) all of W_down, grad * mask"][3] == "FAILED"
    assert rows["(iii) all parameters, grad masks"][3] == "does not fit"
    assert rows["(iii) all parameters, grad masks"][2].startswith(f"plan {plan['all_gm']['total']:.2f} GiB")
    assert table.count("| (a) |") == 3


@pytest.mark.parametrize("ratio,verdict", [(1.1, "ok: on cuda, ratio <= 1.5"), (3.0, "OVERHEAD: on cuda, ratio > 1.5")])
def test_eval_section_gpu_path_with_a_fake_child(gc, tmp_path, monkeypatch, ratio, verdict):
    got = {"ok": True, "device": "cuda", "rows": 256, "batch": 32, "reps": 3, "build_s": 4.0, "weights_gib": 14.96,
           "params_b": 8.03, "batches": 8, "tokens": 20000, "padded_tokens": 21000, "max_len": 131, "min_len": 35,
           "warmup_s": 2.0, "peak_metrics_gib": 17.5, "peak_bare_gib": 18.0, "metrics_s": 1.0 * ratio, "bare_s": 1.0,
           "ratio": ratio, "model_device": "cuda", "es_rows": 256, "finite": True, "plan_gib": 19.2, "gpu": "NVIDIA H200"}

    def fake(cmd, timeout, log=None, env=None, cwd=None):
        assert "--child-eval" in cmd and "--cpu" not in cmd
        return _ok(30.0, "some log line\n" + json.dumps(got) + "\n")

    sec, text, table = _run_section(gc, tmp_path, monkeypatch, fake, "b", "eval")
    (row,) = sec.rows
    assert row[1].startswith(f"{ratio:.3f} s vs 1.000 s, ratio {ratio:.2f}; peak GPU mem 17.50 GiB")
    assert row[2] == "plan's evaluate row 19.20 GiB" and row[3] == verdict
    assert sec.status == ("ok" if ratio < 1.5 else f"check failed ({verdict})")


def test_eval_section_reports_a_crash(gc, tmp_path, monkeypatch):
    def fake(cmd, timeout, log=None, env=None, cwd=None):
        return {"rc": 1, "timed_out": False, "stdout": "", "stderr": "RuntimeError: boom", "s": 1.0}

    sec, text, table = _run_section(gc, tmp_path, monkeypatch, fake, "b", "eval")
    assert sec.status == "failed: failed (rc 1)" and "root error: RuntimeError: boom" in text
    assert table.rstrip().endswith("| FAILED |")
