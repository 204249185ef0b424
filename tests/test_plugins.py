"""Methods as plug-ins (issue 21 item 3): a localizer, an objective and a metric defined in a file outside the
package, loaded by path, used by name with their declared hyperparameters set as key=value, and keyed by
their file's content; the built-in methods register the same way and resolve to the same numbers."""
import copy
import hashlib
import textwrap

import pytest
import torch

from loc_unlearn import plugins
from loc_unlearn.config import EvalConfig, LocalizeConfig, TrainConfig, build_config, method_config
from loc_unlearn.errors import ConfigError
from loc_unlearn.evaluate.tofu import evaluate_model
from loc_unlearn.masks.localize import localize, score
from loc_unlearn.models.value_vectors import value_matrix
from loc_unlearn.registry import LOCALIZERS, METRICS, OBJECTIVES, REGISTRIES
from loc_unlearn.train.loop import train
from loc_unlearn.train.objectives import hparams_from, resolve_hparams

from helpers import make_rows, make_tok, tiny_lm

LOCALIZER = '''
import torch
from loc_unlearn.plugins import localizer
from loc_unlearn.models.value_vectors import shape, value_matrix


@localizer("colnorm_x", params={"scale": (2.0, "multiplier of the column norms"), "skip": (0, "layers left out")})
def colnorm_x(cfg, model, tokenizer, forget_rows, retain_rows):
    s = torch.stack([value_matrix(model, l).detach().double().norm(dim=0) for l in range(shape(model)[0])])
    s[: cfg.params["skip"]] = float("-inf")
    return cfg.params["scale"] * s
'''

OBJECTIVE = '''
from loc_unlearn import plugins
from loc_unlearn.train.objectives import nll_avg


def scaled_ascent(model, batch, ctx):
    lf = -ctx.hp["scale"] * nll_avg(model, batch["forget"])
    return lf, {"forget_loss": lf.detach()}


plugins.register_objective("scaled_ga", scaled_ascent, {"scale": (1.0, "multiplier of the ascent loss")})
'''

METRIC = '''
from loc_unlearn.plugins import metric


@metric("down_norm", higher_is_better=False, label="|W_down|", doc="norm of the first down projection")
def down_norm(model, tokenizer, eval_sets, eval_cfg):
    from loc_unlearn.models.value_vectors import value_matrix
    return float(value_matrix(model, 0).detach().norm())
'''


pytestmark = pytest.mark.usefixtures("builtin_methods_only")  # conftest.py: plug-ins never leak between tests


def write(tmp_path, name, text):
    f = tmp_path / name
    f.write_text(textwrap.dedent(text))
    return f


def cfg_with(f, *overrides):
    return plugins.check_methods(build_config(overrides=[f"plugins={f}", *overrides]))


def test_localizer_plugin_by_name_with_its_param(tmp_path):
    f = write(tmp_path, "my_loc.py", LOCALIZER)
    cfg = cfg_with(f, "localize.method=colnorm_x", "localize.scale=3", "localize.params.skip=1", "localize.ratio=0.25")
    assert cfg.localize.params == {"scale": 3.0, "skip": 1}  # the declared types: float, int
    model = tiny_lm(50, L=3, d=16, d_ff=32)
    norms = torch.stack([value_matrix(model, l).detach().double().norm(dim=0) for l in range(3)])
    s = score("colnorm_x", model, None, [], [], cfg.localize)
    assert torch.equal(s[1:], 3.0 * norms[1:]) and bool((s[0] == float("-inf")).all())
    m = localize(cfg.localize, model, None, [], [])
    assert m.count == round(0.25 * 3 * 32) and m.meta["method"] == "colnorm_x"
    assert not m.mask[0].any()  # skip=1 reached the function
    # unset params take the declared defaults
    assert torch.equal(score("colnorm_x", model, None, [], [], LocalizeConfig()), 2.0 * norms)


def test_objective_plugin_trains_only_masked_columns_and_reads_its_param(tmp_path):
    f = write(tmp_path, "my_obj.py", OBJECTIVE)
    cfg = cfg_with(f, "unlearn.method=scaled_ga", "unlearn.scale=3")
    hp = hparams_from(method_config(cfg.unlearn, "scaled_ga"))
    assert hp == {"scale": 3.0} and resolve_hparams("scaled_ga", hp, 2) == {"scale": 3.0}
    tok = make_tok()
    start = tiny_lm(tok, L=2)
    mask = torch.rand(2, 64, generator=torch.Generator().manual_seed(7)) < 0.15
    tcfg = TrainConfig(lr=1e-2, epochs=1, batch_size=4, max_length=64, seed=3)
    logs = {}
    for scale in (1.0, 3.0):
        model = copy.deepcopy(start)
        res = train(model, tok, make_rows(8), [], "scaled_ga", tcfg, tmp_path / f"s{scale}", mask=mask,
                    hparams={"scale": scale})
        logs[scale] = res.log
    assert [r["step"] for r in logs[3.0]] == [1, 2]
    # the first step's loss is computed at the start model: it scales with the declared param
    assert logs[3.0][0]["loss"] == pytest.approx(3.0 * logs[1.0][0]["loss"], rel=1e-5)
    trained = res.model
    for (n, p0), p1 in zip(start.named_parameters(), trained.parameters()):
        if "down_proj" not in n:
            assert torch.equal(p0, p1), n
    for l in range(2):
        changed = (value_matrix(trained, l) != value_matrix(start, l)).any(0)
        assert changed.any() and not (changed & ~mask[l]).any()  # only masked value vectors moved


def test_metric_plugin_in_evaluate_model(tmp_path):
    f = write(tmp_path, "my_metric.py", METRIC)
    cfg = cfg_with(f, "eval.metrics=down_norm")
    assert METRICS["down_norm"].label == "|W_down|" and not METRICS["down_norm"].higher_is_better
    tok = make_tok()
    model = tiny_lm(tok, L=2).eval()
    sets = {"forget": make_rows(4), "retain": make_rows(4, 5)}
    ecfg = EvalConfig(batch_size=4, rouge=False, metrics=cfg.eval.metrics)
    out = evaluate_model(model, tok, sets, ecfg)
    assert out["metrics"] == {"down_norm": pytest.approx(float(value_matrix(model, 0).detach().norm()))}
    assert evaluate_model(model, tok, sets, ecfg, es_only=True)["metrics"] == {}  # ES-only points skip them
    assert evaluate_model(model, tok, sets, EvalConfig(batch_size=4, rouge=False))["metrics"] == {}
    assert plugins.metrics_help()[-1] == ("down_norm", "|W_down|", "lower is better",
                                          "norm of the first down projection")


@pytest.mark.parametrize("text,needle", [
    (None, "no such file"),
    ("def broken(:\n", "SyntaxError"),
    ("x = 1\nraise RuntimeError('boom')\n", "RuntimeError: boom (at bad.py line 2)"),
    ("from loc_unlearn.plugins import register_objective\nregister_objective('npo', print)\n",
     "unlearning method 'npo' is already registered (built in)"),
])
def test_load_errors_are_one_paragraph_naming_the_file(tmp_path, text, needle):
    f = tmp_path / "bad.py"
    if text is not None:
        f.write_text(text)
    with pytest.raises(ConfigError) as e:
        plugins.load_plugins([str(f)])
    msg = str(e.value)
    assert msg.startswith(f"plugins: cannot load {f}") and needle in msg, msg
    assert "\n" not in msg and "Traceback" not in msg
    assert "npo" in OBJECTIVES and OBJECTIVES["npo"].fingerprint == ""  # a failed load leaves the built-ins


def test_module_specs_and_function_refs(tmp_path, monkeypatch):
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "methods.py").write_text(textwrap.dedent('''
        from loc_unlearn.plugins import register_localizer
        def zeros(cfg, model, tokenizer, forget_rows, retain_rows):
            raise NotImplementedError
        def register():
            register_localizer("later", zeros)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.load_plugins(["mypkg.methods"])
    assert "later" not in LOCALIZERS
    plugins.load_plugins(["mypkg.methods:register", "mypkg.methods:register"])  # the second is a no-op
    digest = hashlib.sha256((tmp_path / "mypkg" / "methods.py").read_bytes()).hexdigest()
    assert LOCALIZERS.fingerprint("later") == digest
    with pytest.raises(ConfigError, match="cannot load nopkg.nothing: .*nopkg"):
        plugins.load_plugins(["nopkg.nothing"])


def test_fingerprint_follows_the_file_content(tmp_path):
    # built-ins have none: their run keys do not change
    assert all(r.fingerprint == "" for reg in REGISTRIES.values() for r in reg.values())
    f = write(tmp_path, "my_loc.py", LOCALIZER)
    plugins.load_plugins([str(f)])
    rec = LOCALIZERS["colnorm_x"]
    assert LOCALIZERS.fingerprint("colnorm_x") == hashlib.sha256(f.read_bytes()).hexdigest()
    assert rec.origin == str(f.resolve()) and rec.docs["scale"] == "multiplier of the column norms"
    plugins.load_plugins([str(f)])
    assert LOCALIZERS["colnorm_x"] is rec  # the same file again: a no-op
    f.write_text(f.read_text().replace("(2.0,", "(2.5,"))
    plugins.load_plugins([str(f)])  # changed: loaded again, replacing its methods
    assert LOCALIZERS.fingerprint("colnorm_x") == hashlib.sha256(f.read_bytes()).hexdigest() != rec.fingerprint
    assert LOCALIZERS["colnorm_x"].defaults["scale"] == 2.5
    g = write(tmp_path, "other.py", LOCALIZER)  # another file may not take the name
    with pytest.raises(ConfigError, match=f"already registered \\(defined in {f.resolve()}\\)"):
        plugins.load_plugins([str(g)])


@pytest.mark.parametrize("overrides,needle", [
    (["unlearn.method=nope"], "unlearn.method: unknown unlearning method 'nope'; known: dpo, ga, graddiff"),
    (["study.methods=npo,nope"], "study.methods: unknown unlearning method 'nope'"),
    (["study.localizers=random,magic"], "study.localizers: unknown localization method 'magic'; known: activation"),
    (["localize.method=magic"], "localize.method: unknown localization method 'magic'"),
    (["eval.metrics=nope"], "eval.metrics: unknown evaluation metric 'nope'"),
    (["unlearn.nope=1"], "unknown config key 'unlearn.nope'"),
    (["localize.params.nope=1"], "unknown config key 'localize.nope': neither a field of localize nor a"),
    (["unlearn.per_method.npo.rmu_c=1"], "unknown config key 'unlearn.per_method.npo.rmu_c': not a field of unlearn"),
    (["unlearn.per_method.nope.beta=1"], "unlearn.per_method: unknown unlearning method 'nope'"),
    (["unlearn.rmu_layer=abc"], "config key 'unlearn.rmu_layer': expected int"),
    (["localize.memflex_copies=2.5"], "config key 'localize.memflex_copies': expected int"),
])
def test_check_methods_names_the_key(overrides, needle):
    cfg = build_config(overrides=overrides)  # config itself imports no registry and checks no method
    with pytest.raises(ConfigError) as e:
        plugins.check_methods(cfg)
    assert needle in str(e.value), str(e.value)


def test_params_from_key_value_and_yaml(tmp_path):
    f = write(tmp_path, "c.yaml", """
        unlearn:
          beta: 0.2
          per_method: {rmu: {rmu_c: 5, train: {lr: 0.3}}}
        localize:
          memflex_threshold: 0.9
    """)
    cfg = plugins.check_methods(build_config(config_file=str(f), overrides=[
        "unlearn.gamma=1", "unlearn.params.delta=1e-3", "unlearn.rmu_layer=2", "localize.memflex_copies=4"]))
    assert cfg.unlearn.params == {"beta": 0.2, "gamma": 1.0, "delta": 0.001, "rmu_layer": 2}
    assert [type(v) for v in cfg.unlearn.params.values()] == [float, float, float, int]
    assert cfg.localize.params == {"memflex_threshold": 0.9, "memflex_copies": 4}
    rmu = method_config(cfg.unlearn, "rmu")
    assert rmu.params == {"beta": 0.2, "gamma": 1.0, "delta": 0.001, "rmu_layer": 2, "rmu_c": 5.0}
    assert rmu.train.lr == 0.3 and "rmu_c" not in cfg.unlearn.params
    assert resolve_hparams("rmu", hparams_from(rmu), 4) == {"gamma": 1.0, "alpha": 100.0, "rmu_c": 5.0, "rmu_layer": 2}
    assert resolve_hparams("npo", hparams_from(method_config(cfg.unlearn, "npo")), 4) == \
        {"gamma": 1.0, "alpha": 1.0, "beta": 0.2}


# The hyperparameters every built-in method resolved to before they moved out of the config sections
# (UnlearnConfig gamma/alpha/beta/delta None, rmu_layer -1, rmu_c 6.5; LocalizeConfig memflex_threshold 0.92,
# memflex_copies 3, wagle_gamma 1e-6), at a 4-layer model.
BEFORE = {
    "ga": {"gamma": 1.0, "alpha": 0.0}, "graddiff": {"gamma": 1.0, "alpha": 1.0},
    "wga": {"gamma": 1.0, "alpha": 1.0, "beta": 1.0}, "npo": {"gamma": 1.0, "alpha": 1.0, "beta": 0.1},
    "simnpo": {"gamma": 0.125, "alpha": 1.0, "beta": 4.5, "delta": 0.0},
    "dpo": {"gamma": 1.0, "alpha": 1.0, "beta": 0.1},
    "rmu": {"gamma": 1.0, "alpha": 100.0, "rmu_c": 6.5, "rmu_layer": 1},
    "learn": {"gamma": 1.0, "alpha": 0.0}, "learn_reg": {"gamma": 1.0, "alpha": 1.0},
}


@pytest.mark.parametrize("preset", ["tiny", "smol", "smol-quick", "paper-llama3.1-8b", "paper-olmo2-7b"])
def test_builtin_hparams_resolve_as_before(preset):
    cfg = plugins.check_methods(build_config(preset=preset))
    for method, want in BEFORE.items():
        got = resolve_hparams(method, hparams_from(method_config(cfg.unlearn, method)), 4)
        assert got == want and [type(v) for v in got.values()] == [type(v) for v in want.values()], method
    assert plugins.resolve_params(LOCALIZERS["memflex"], cfg.localize.params, "localize") == \
        {"memflex_threshold": 0.92, "memflex_copies": 3}
    assert plugins.resolve_params(LOCALIZERS["wagle"], cfg.localize.params, "localize") == {"wagle_gamma": 1e-6}


def test_help_lists_every_declared_param(tmp_path):
    plugins.load_plugins([str(write(tmp_path, "my_loc.py", LOCALIZER))])
    rows = {k: (t, d, doc) for k, t, d, doc in plugins.params_help("unlearn") + plugins.params_help("localize")}
    assert rows["unlearn.beta"][:2] == ("float", "wga 1.0; npo, dpo 0.1; simnpo 4.5")
    assert rows["unlearn.rmu_layer"][0] == "int" and "7 scaled" in rows["unlearn.rmu_layer"][2]
    assert rows["localize.memflex_threshold"][1] == "memflex 0.92"
    assert rows["localize.scale"] == ("float", "colnorm_x 2.0", "multiplier of the column norms")
    assert all(doc for _, _, doc in rows.values())  # every built-in hyperparameter has a doc line


def test_importing_the_package_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, loc_unlearn, loc_unlearn.plugins, loc_unlearn.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
