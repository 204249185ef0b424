import pytest

from loc_unlearn.config import build_config, dump_yaml, known_presets
from loc_unlearn.errors import ConfigError
from loc_unlearn.plugins import check_methods


def test_presets_all_load():
    assert {"tiny", "smol", "paper-llama3.1-8b", "paper-olmo2-7b"} <= set(known_presets())
    for name in known_presets():
        cfg = build_config(preset=name)
        assert cfg.preset == name
        # a study preset may reuse another preset's base model (smol-quick: SmolLM2 = model preset smol)
        assert cfg.model.preset == name or (name == "smol-quick" and cfg.model.preset == "smol")


def test_override_order_and_types(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("unlearn:\n  method: wga\n  train: {lr: 0.5}\n")
    cfg = build_config(config_file=str(f), overrides=["unlearn.train.lr=1e-4", "method=dpo", "study.methods=npo,rmu"],
                       aliases={"method": "unlearn.method"})
    assert cfg.unlearn.method == "dpo" and cfg.unlearn.train.lr == pytest.approx(1e-4)
    assert cfg.study.methods == ["npo", "rmu"]
    assert "beta" not in cfg.unlearn.params  # unset: each method's default
    cfg2 = build_config(overrides=["unlearn.beta=0.3", "model.path=123"])
    assert cfg2.unlearn.params["beta"] == pytest.approx(0.3) and cfg2.model.path == "123"


@pytest.mark.parametrize("item,needle", [
    ("unlearn.nope=1", "unlearn.nope"),
    ("unlearn.train.epochs=abc", "unlearn.train.epochs"),
    ("eval.es_floor=bogus", "eval.es_floor"),
    ("preset=huge", "known presets"),
    ("novalue", "key=value"),
])
def test_bad_overrides_name_the_key(item, needle):
    # Unknown keys of unlearn/localize may be method hyperparameters: the registries check them (check_methods).
    with pytest.raises(ConfigError, match=needle):
        check_methods(build_config(overrides=[item]))


def test_yaml_roundtrip(tmp_path):
    cfg = build_config(overrides=["unlearn.method=rmu"])
    f = tmp_path / "dump.yaml"
    f.write_text(dump_yaml(cfg))
    assert build_config(config_file=str(f)) == cfg
