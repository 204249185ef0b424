"""Plug-ins end to end (issue 21 item 3): one file outside the package defines a localizer, an objective and a
metric; the CLI's `localize`, `unlearn`, `evaluate` and a mini controlled study use them by name with their
hyperparameters as key=value, the report shows the metric, and editing the file invalidates exactly the
runs that used it (unchanged, everything is reused)."""
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from loc_unlearn import stages
from loc_unlearn.cli import main
from loc_unlearn.masks.mask import Mask
from loc_unlearn.models.load import load_model
from loc_unlearn.models.value_vectors import value_matrix

from helpers import MINI

SOURCE = '''
import torch
from loc_unlearn.plugins import localizer, metric, objective
from loc_unlearn.models.value_vectors import shape, value_matrix
from loc_unlearn.train.objectives import nll_avg


@localizer("colnorm_skip", params={"skip": (0, "leading layers never selected")})
def colnorm_skip(cfg, model, tokenizer, forget_rows, retain_rows):
    s = torch.stack([value_matrix(model, l).detach().double().norm(dim=0) for l in range(shape(model)[0])])
    s[: cfg.params["skip"]] = float("-inf")
    return s


@objective("scaled_ga", params={"scale": (1.0, "multiplier of the ascent loss")})
def scaled_ga(model, batch, ctx):
    lf = -ctx.hp["scale"] * nll_avg(model, batch["forget"])
    return lf, {"forget_loss": lf.detach()}


@metric("down_norm", higher_is_better=False, label="W_down norm", doc="Frobenius norm of the last layer's down projection")
def down_norm(model, tokenizer, eval_sets, eval_cfg):
    return float(value_matrix(model, shape(model)[0] - 1).detach().double().norm())
'''


pytestmark = pytest.mark.usefixtures("builtin_methods_only")  # conftest.py; the CLI runs in this process


def _down_norm(path) -> float:
    model, _ = load_model(str(path))
    return float(value_matrix(model, -1 % len(model.model.layers)).detach().double().norm())


def test_plugins_through_localize_unlearn_evaluate_and_a_study(tmp_path, mini_cfg, capsys):
    plug = tmp_path / "outside" / "my_methods.py"
    plug.parent.mkdir()
    plug.write_text(SOURCE)
    runs = tmp_path / "runs"
    cfg = mini_cfg(runs)
    data = stages.data_source(cfg)
    theta_r = stages.retain_model(cfg, data)
    theta_o = stages.prepare_seed(cfg, data, theta_r, 0)["theta_o"]
    common = [f"runs_dir={runs}", *MINI, f"plugins={plug}"]

    # localize: the plug-in localizer with its own hyperparameter from the command line
    mask_file = tmp_path / "mask.safetensors"
    assert main(["localize", *common, f"model={theta_o.run.path}", "method=colnorm_skip", "localize.skip=1",
                 "ratio=0.25", f"out={mask_file}"]) == 0
    mask = Mask.load(mask_file)
    counts = mask.per_layer_counts()
    assert counts[0] == 0 and sum(counts) == round(0.25 * mask.mask.numel())  # skip=1 reached the method

    # unlearn: the plug-in objective (scale from key=value) and the plug-in metric at every full point
    args = ["unlearn", *common, f"model={theta_o.run.path}", f"mask={mask_file}", "method=scaled_ga",
            "unlearn.scale=2", f"reference={theta_r.run.path}", "eval.metrics=[down_norm]"]
    assert main(args) == 0
    out = capsys.readouterr().out
    run_dir = next(line.split("run: ", 1)[1] for line in out.splitlines() if line.startswith("run: "))
    met = json.loads((Path(run_dir) / "metrics.json").read_text())
    traj = met["trajectory"]
    assert all("down_norm" in p["metrics"] for p in traj) and "down_norm" in out
    assert traj[0]["metrics"]["down_norm"] == pytest.approx(_down_norm(theta_o.path), rel=1e-12)
    # the last point's value: theta_o's last down projection plus that checkpoint's delta columns, added here
    ck = Path(run_dir) / "train" / f"ckpt-{traj[-1]['step']}"
    model, _ = load_model(theta_o.path)
    delta = load_file(str(ck / "delta.safetensors"))
    last = len(model.model.layers) - 1
    assert len(delta["idx.0"]) == 0 and len(delta[f"idx.{last}"]) == counts[last]  # the plug-in's mask
    w = value_matrix(model, last).detach().double().clone()
    w[:, delta[f"idx.{last}"].long()] += delta[f"delta.{last}"].double()
    assert traj[-1]["metrics"]["down_norm"] == pytest.approx(float(w.norm()), rel=1e-6)
    assert traj[-1]["metrics"]["down_norm"] != traj[0]["metrics"]["down_norm"]  # the objective moved it
    assert met["method"] == "scaled_ga"

    # evaluate: the metric in metrics.json, next to the built-in ones
    assert main(["evaluate", *common, f"model={theta_o.run.path}", "eval.metrics=[down_norm]",
                 f"out={tmp_path / 'ev'}"]) == 0
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert ev["metrics"]["down_norm"] == pytest.approx(_down_norm(theta_o.path), rel=1e-12) and "FS" in ev

    # a mini controlled study: the plug-in objective, localizer (localization check) and metric (paired test)
    assert main(["study", "controlled", *common, "study.seeds=2", "study.methods=[scaled_ga]",
                 "study.localizers=[colnorm_skip]", "study.output_fit=false", "eval.metrics=[down_norm]",
                 "unlearn.per_method={scaled_ga: {scale: 2}}"]) == 0
    (study,) = (runs / "study-controlled").glob("*/results.json")
    res = json.loads(study.read_text())
    assert {r["method"] for r in res["runs"]} == {"scaled_ga"}
    assert all(isinstance(r["down_norm"], float) for r in res["runs"])
    assert {(t["method"], t["metric"]) for t in res["tests"]} == {("scaled_ga", m) for m in ("aues", "mu95", "down_norm")}
    assert [m["name"] for m in res["metrics"]] == ["down_norm"] and res["metrics"][0]["higher_is_better"] is False
    assert {r["method"] for r in res["localization_check"]} >= {"colnorm_skip"}
    report = (study.parent / "report.md").read_text()
    assert "W_down norm: Oracle vs Random" in report and "Frobenius norm of the last layer" in report

    # caching: the same command again reuses its run; an edited plug-in file is a new run
    n_unlearn = len(list((runs / "unlearn").iterdir()))
    assert main(args) == 0
    assert len(list((runs / "unlearn").iterdir())) == n_unlearn
    assert f"run: {run_dir}" in capsys.readouterr().out
    plug.write_text(SOURCE.replace("lf = -ctx.hp", "lf = -1.0 * ctx.hp"))  # same numbers, another source
    assert main(args) == 0
    again = next(line.split("run: ", 1)[1] for line in capsys.readouterr().out.splitlines() if line.startswith("run: "))
    assert again != run_dir and len(list((runs / "unlearn").iterdir())) == n_unlearn + 1


def test_help_lists_a_plugins_hyperparameters_and_metrics(tmp_path, capsys):
    plug = tmp_path / "my_methods.py"
    plug.write_text(SOURCE)
    with pytest.raises(SystemExit):
        main(["unlearn", f"plugins={plug}", "--help"])
    out = capsys.readouterr().out
    assert "unlearn.scale (float, default per method: scaled_ga 1.0): multiplier of the ascent loss" in out
    assert "down_norm: W_down norm, lower is better" in out
    with pytest.raises(SystemExit):
        main(["localize", f"plugins={plug}", "--help"])
    assert "localize.skip (int, default per method: colnorm_skip 0)" in capsys.readouterr().out


def test_unknown_plugin_method_or_param_is_one_paragraph(tmp_path, capsys):
    plug = tmp_path / "my_methods.py"
    plug.write_text(SOURCE)
    assert main(["unlearn", f"runs_dir={tmp_path}", f"plugins={plug}", "model=x", "method=scaled_gx"]) == 2
    err = capsys.readouterr().err
    assert "unlearn.method" in err and "scaled_gx" in err and "scaled_ga" in err and "Traceback" not in err
    assert main(["unlearn", f"runs_dir={tmp_path}", f"plugins={plug}", "model=x", "unlearn.scael=2"]) == 2
    err = capsys.readouterr().err
    assert "unlearn.scael" in err and "scale" in err
    assert main(["unlearn", f"runs_dir={tmp_path}", f"plugins={tmp_path / 'missing.py'}", "model=x"]) == 2
    assert "missing.py" in capsys.readouterr().err

