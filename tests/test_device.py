"""The one device rule (issue 20 item 1): every stage that runs a model puts it on its device through
`utils.place` (config key `device`), and each run's metrics record the device and dtype used.

How a bypass is caught: a global forward pre-hook (torch's `register_module_forward_pre_hook`) sees every
module call of the mini pipeline. For each call of an outermost model (a transformers PreTrainedModel not
running inside another PreTrainedModel's forward: training, metrics, generation, localization, the output
fit, the attacks all call the whole model), it records the model's placement mark (`utils.placed_device`,
set only by `place`) and where its weights actually are. A stage that loads a model and runs it without
`place` leaves a record without a mark, and the tests below fail naming that stage.

Verified to fail by removing one call site at a time: without the `place` in `stages.ModelRef.load`,
test_every_model_running_stage_places_its_models (and the device=cpu and device=cuda tests) fail; without
the one in `stages.tiny_base` alone it fails with "models run without utils.place (phase, stage, model):
[('pipeline', 'base', 'LlamaForCausalLM')]". test_the_recorder_catches_a_bypass keeps that proof in the
suite: a stage's evaluation run on a model loaded without `place` is recorded as unplaced.
"""
import dataclasses
import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import helpers
import pytest
import torch
from transformers import PreTrainedModel

from loc_unlearn import runs, stages
from loc_unlearn.config import build_config, method_config
from loc_unlearn.errors import ConfigError, UserError
from loc_unlearn.utils import device_info, place, placed_device, resolve_device

# Every phase of the fixture below runs models; each must record at least one forward, all placed.
PHASES = ("pipeline", "localize", "output_fit", "positive_control", "attack_relearn", "attack_quantize",
          "trajectory")
# Cached stages whose build runs a model in that pipeline (runs.cached's stage names).
MODEL_STAGES = {"base", "finetune", "inject_full", "inject", "localize", "evaluate", "unlearn", "output_fit",
                "attack_relearn", "attack_quantize"}


class Recorder:
    """Records every forward of an outermost PreTrainedModel: phase, run stage, placement mark, device."""

    def __init__(self):
        self.records: list[dict] = []
        self.phase = None
        self.stages: list[str] = []  # runs being built, innermost last (runs._build wrapped below)
        self._models: list[bool] = []  # per module call in progress: is it a PreTrainedModel?

    def pre(self, module, args):
        is_model = isinstance(module, PreTrainedModel)
        if is_model and not any(self._models):
            p = next(module.parameters(), None)
            self.records.append({"phase": self.phase, "stage": self.stages[-1] if self.stages else None,
                                 "model": type(module).__name__, "placed": placed_device(module),
                                 "on": None if p is None else str(p.device)})
        self._models.append(is_model)

    def post(self, module, args, output):
        self._models.pop()

    @contextmanager
    def installed(self):
        real_build = runs._build

        def build(run, fn):  # runs.cached calls runs._build by its module-global name
            self.stages.append(run.stage)
            try:
                return real_build(run, fn)
            finally:
                self.stages.pop()

        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        h1 = register_module_forward_pre_hook(self.pre)
        h2 = register_module_forward_hook(self.post, always_call=True)  # popped even when a forward raises
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(runs, "_build", build)
            try:
                yield self
            finally:
                h1.remove()
                h2.remove()

    @contextmanager
    def phase_of(self, name):
        self.phase = name
        try:
            yield
        finally:
            self.phase = None


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, mini_cfg):
    """The mini pipeline with device=cpu, every model-running stage once, under the recorder."""
    from loc_unlearn.studies.controls import positive_control

    d = tmp_path_factory.mktemp("device")
    cfg = mini_cfg(d / "runs", "device=cpu", "attack.schedule=0,2", "attack.relearn_data=forget_relearn",
                   "attack.bits=[8]")
    rec = Recorder()
    with rec.installed():
        with rec.phase_of("pipeline"):  # base pretraining, theta_r, injection (full and masked), evaluation, unlearning
            theta_r = stages.retain_model(cfg, stages.data_source(cfg))
            prep = stages.prepare_seed(cfg, stages.data_source(cfg), theta_r, 0)
            run = stages.unlearn(cfg, stages.data_source(cfg), prep["theta_o"], prep["masks"]["random"], theta_r,
                                 method_config(cfg.unlearn, "npo"))
        with rec.phase_of("localize"):  # forward (activation) and backward (gradient) localizers
            for method in ("activation", "gradient"):
                stages.localize(cfg, stages.data_source(cfg), theta_r, dataclasses.replace(cfg.localize, method=method))
        with rec.phase_of("output_fit"):
            stages.output_fit(cfg, stages.data_source(cfg), theta_r, prep)
        with rec.phase_of("positive_control"):
            positive_control(cfg, stages.data_source(cfg), theta_r, [prep])
        with rec.phase_of("attack_relearn"):
            stages.relearn(cfg, stages.data_source(cfg), prep["theta_o"], theta_r)
        with rec.phase_of("attack_quantize"):
            stages.quantize(cfg, stages.data_source(cfg), prep["theta_o"])
        with rec.phase_of("trajectory"):
            # A checkpoint folder outside the runs dir is keyed by its content: a fresh evaluation.
            ck = shutil.copytree(prep["theta_o"].path, d / "ckpt-1")
            stages.trajectory(cfg, stages.data_source(cfg), prep["theta_o"].path, [str(ck)], theta_r.path)
    return {"cfg": cfg, "rec": rec, "theta_r": theta_r, "prep": prep, "unlearn": run}


def test_every_model_running_stage_places_its_models(recorded):
    recs = recorded["rec"].records
    assert recs, "the recorder saw no forward at all"
    missing = [ph for ph in PHASES if not any(r["phase"] == ph for r in recs)]
    assert not missing, f"phases that ran no model (the test no longer covers them): {missing}"
    seen = {r["stage"] for r in recs}
    assert MODEL_STAGES <= seen, f"stages that ran no model: {sorted(MODEL_STAGES - seen)}"
    bypass = sorted({(r["phase"], r["stage"], r["model"]) for r in recs if r["placed"] is None})
    assert not bypass, f"models run without utils.place (phase, stage, model): {bypass}"


def test_device_cpu_puts_every_model_on_the_cpu(recorded):
    recs = recorded["rec"].records
    assert {r["placed"] for r in recs} == {"cpu"}
    assert {r["on"] for r in recs} == {"cpu"}  # and nothing moved them elsewhere after placing


def test_metrics_record_device_and_dtype(recorded):
    runs_dir = Path(recorded["cfg"].runs_dir)
    files = []
    for stage in ("base", "finetune", "inject_full", "inject", "localize", "evaluate", "unlearn", "output_fit",
                  "control_reset", "attack_relearn", "attack_quantize"):
        found = sorted((runs_dir / stage).glob("*/metrics.json"))
        assert found, f"no {stage} run"
        files += found
    for f in files:
        met = json.loads(f.read_text())
        assert (met.get("device"), met.get("dtype")) == ("cpu", "float32"), f


def test_the_recorder_catches_a_bypass(recorded, tmp_path):
    """A model loaded without `place` and run by a stage's evaluation is recorded as unplaced: the check
    above would fail on such a stage."""
    from loc_unlearn.models.load import load_model

    cfg, theta_r = recorded["cfg"], recorded["theta_r"]
    model, tok = load_model(theta_r.path)  # the bypass: no utils.place
    rec = Recorder()
    with rec.installed(), rec.phase_of("bypass"):
        stages.exact_match_rate(model, tok, stages.data_source(cfg).forget_rows()[:4], cfg)
    assert rec.records and all(r["placed"] is None for r in rec.records)
    place(model, "cpu")
    rec2 = Recorder()
    with rec2.installed(), rec2.phase_of("placed"):
        stages.exact_match_rate(model, tok, stages.data_source(cfg).forget_rows()[:4], cfg)
    assert rec2.records and all(r["placed"] == "cpu" for r in rec2.records)


def test_device_setting_is_validated_and_kept_out_of_run_keys(tmp_path, mini_cfg):
    with pytest.raises(ConfigError, match="config key 'device'.*auto.*cpu.*cuda"):
        build_config(overrides=["device=gpu"])
    with pytest.raises(ConfigError, match="config key 'device'"):
        dataclasses.replace(build_config(), device="tpu").validate()
    with pytest.raises(ConfigError, match="config key 'device'"):
        resolve_device("gpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    # Not in any run key: the same stage keys under every setting (the study key drops it entirely).
    from loc_unlearn.studies.common import study_key

    a, b = mini_cfg(tmp_path, "device=cpu"), mini_cfg(tmp_path, "device=auto")
    data = stages.data_source(a)
    assert study_key(a, "controlled", data) == study_key(b, "controlled", data)
    assert "device" not in study_key(a, "controlled", data)["config"]
    assert stages.eval_key(a) == stages.eval_key(b)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_device_cuda_without_a_gpu_is_a_clear_error(recorded, tmp_path, capsys):
    from loc_unlearn.cli import main

    with pytest.raises(UserError, match="config key 'device' is 'cuda'.*device=auto.*device=cpu"):
        resolve_device("cuda")
    # Through the command line: one paragraph naming the key, exit 2, no traceback. A fresh runs dir, so
    # the evaluation is not cached and the model is really loaded (and placed).
    rc = main(["evaluate", f"model={recorded['theta_r'].path}", "device=cuda", f"runs_dir={tmp_path}",
               *helpers.MINI])
    err = capsys.readouterr().err
    assert rc == 2
    assert "config key 'device' is 'cuda'" in err and "Traceback" not in err


def test_place_marks_and_device_info(tiny_lm):
    m = tiny_lm(50)
    assert placed_device(m) is None
    assert place(m, "cpu") is m and placed_device(m) == "cpu"
    assert device_info(m) == {"device": "cpu", "dtype": "float32"}
    assert device_info(m.to(torch.bfloat16)) == {"device": "cpu", "dtype": "bfloat16"}
    import copy

    assert placed_device(copy.deepcopy(m)) == "cpu"  # copies of a placed model (output fit's stitched) count

