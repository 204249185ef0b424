"""Bad input: each mistake gets one clear paragraph naming the file/line/field/key, exit code 2 and no
traceback, and nothing is written that a later run would take as complete."""
import pickle
import shutil

import pytest
import torch

from loc_unlearn.cli import main
from loc_unlearn.masks.mask import Mask


def run_cli(capsys, *args):
    rc = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, err


@pytest.fixture()
def data_copy(world_dir, tmp_path):
    d = tmp_path / "data"
    shutil.copytree(world_dir, d)
    return d


def _common(tmp_path, tiny_model_dir, data):
    return [f"runs_dir={tmp_path / 'runs'}", f"model.path={tiny_model_dir}", f"data={data}",
            "finetune.train.epochs=1"]


def _lines(path):
    return path.read_text().splitlines()


@pytest.mark.parametrize("damage,needle", [
    ("malformed", r"retain90.json: line 3: malformed JSON"),
    ("missing_field", r"retain90.json: line 2: missing field 'answer'"),
    ("wrong_type", r"retain90.json: line 4: field 'question' must be a string"),
    ("empty_answer", r"retain90.json: line 5: field 'answer' is empty"),
    ("empty_split", r"split 'retain90' is empty"),
    ("missing_split", r"no retain90.json or retain90.jsonl"),
])
def test_malformed_data_is_named(capsys, tmp_path, tiny_model_dir, data_copy, damage, needle):
    import json

    f = data_copy / "retain90.json"
    lines = _lines(f)
    if damage == "malformed":
        lines[2] = lines[2][:-5]
    elif damage == "missing_field":
        row = json.loads(lines[1]); del row["answer"]; lines[1] = json.dumps(row)
    elif damage == "wrong_type":
        row = json.loads(lines[3]); row["question"] = 7; lines[3] = json.dumps(row)
    elif damage == "empty_answer":
        row = json.loads(lines[4]); row["answer"] = "  "; lines[4] = json.dumps(row)
    elif damage == "empty_split":
        lines = []
    if damage == "missing_split":
        f.unlink()
    else:
        f.write_text("\n".join(lines) + ("\n" if lines else ""))
    rc, err = run_cli(capsys, "finetune", *_common(tmp_path, tiny_model_dir, data_copy))
    assert rc == 2
    assert needle in err
    assert not list((tmp_path / "runs").rglob("manifest.json"))  # nothing marked complete


@pytest.mark.parametrize("args,needle", [
    (["finetune", "preset=huge"], "known presets: paper-llama3.1-8b, paper-olmo2-7b, smol, smol-quick, tiny"),
    (["unlearn", "method=forget_all"], "known: dpo, ga, graddiff"),
    (["localize", "method=magic"], "known: activation, gradient, memflex, norm, random"),
    (["study", "controlled", "study.methods=npo,nope"], "study.methods: unknown unlearning method 'nope'"),
    (["evaluate", "eval.mu95=median"], "eval.mu95': expected one of ['first', 'best']"),
    (["localize", "ratio=-0.1"], "localize.ratio=-0.1: expected a fraction"),
    (["inject", "ratio=1.5"], "inject.ratio=1.5: expected a fraction"),
    (["unlearn", "unlearn.train.lr=fast"], "unlearn.train.lr': expected float"),
    (["unlearn", "unlearn.nope=1"], "unknown config key 'unlearn.nope'"),
    (["frobnicate"], "unknown command 'frobnicate'"),
])
def test_bad_names_and_values(capsys, tmp_path, args, needle):
    rc, err = run_cli(capsys, *args, f"runs_dir={tmp_path}")
    assert rc == 2 and needle in err, err


def _mask_args(tmp_path, tiny_model_dir, world_dir, mask):
    return ["unlearn", f"runs_dir={tmp_path / 'runs'}", f"model={tiny_model_dir}", f"eval.reference={tiny_model_dir}",
            f"data={world_dir}", f"mask={mask}", "method=npo", "unlearn.train.epochs=1", "eval.rouge=false"]


def test_mask_of_wrong_shape(capsys, tmp_path, tiny_model_dir, world_dir):
    path = tmp_path / "wrong.safetensors"
    Mask(torch.zeros(3, 64, dtype=torch.bool).index_fill_(1, torch.tensor([1]), True), {"method": "random"}).save(path)
    rc, err = run_cli(capsys, *_mask_args(tmp_path, tiny_model_dir, world_dir, path))
    assert rc == 2 and "wrong.safetensors" in err and "(3, 64)" in err and "(2, 64)" in err, err


@pytest.mark.parametrize("kind", ["pickle", "garbage", "truncated"])
def test_not_a_mask_file(capsys, tmp_path, tiny_model_dir, world_dir, kind):
    path = tmp_path / f"{kind}.safetensors"
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"mask": [[True, False]]}))
    elif kind == "garbage":
        path.write_bytes(b"\x00\x01not a mask at all" * 10)
    else:
        good = tmp_path / "good.safetensors"
        Mask(torch.ones(2, 64, dtype=torch.bool), {"method": "random"}).save(good)
        path.write_bytes(good.read_bytes()[:-40])
    rc, err = run_cli(capsys, *_mask_args(tmp_path, tiny_model_dir, world_dir, path))
    assert rc == 2 and path.name in err, err


def test_nan_loss_stops_with_the_step(capsys, tmp_path, tiny_model_dir, world_dir):
    # A learning rate this large overflows the weights within a few steps: the loss becomes inf/NaN.
    rc, err = run_cli(capsys, "finetune", *_common(tmp_path, tiny_model_dir, world_dir)[:3],
                      "finetune.train.lr=1e30", "finetune.train.epochs=3", "finetune.train.warmup_epochs=0",
                      "finetune.train.grad_clip=0")
    assert rc == 2 and "step" in err and ("nan" in err.lower() or "inf" in err.lower()), err
    assert not list((tmp_path / "runs" / "finetune").rglob("manifest.json"))
