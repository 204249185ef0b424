"""Answers longer than the model's context (issue 13).

A TOFU-format folder with one very long answer used to get `evaluate` and `unlearn` SIGKILLed: eval
encoded whole answers (no max_length), so one row made a [T, T] attention and a [T, V] logit buffer.
Now evaluation cuts every sequence to the model's max_position_embeddings (and training to
min(train.max_length, max_position_embeddings)) and the metrics say how many rows were cut.

Every test bounds its cost by construction: the long answer is only a few thousand tokens (cheap even
uncut, so a regression fails the assertions instead of exhausting memory), and every forward pass is
watched: no batch may be longer than the model's context.
"""
import json
import math
import shutil

import pytest
import torch

from loc_unlearn.config import EvalConfig, TinyModelConfig, TrainConfig
from loc_unlearn.data.tofu import load_split
from loc_unlearn.models.load import build_tiny, load_model

CTX = 160  # max_position_embeddings of the model under test
LONG = " ".join(["The author kept writing one more chapter about the old harbor town"] * 600)  # ~7000 tokens


@pytest.fixture(scope="module")
def short_ctx_model_dir(world_dir, tmp_path_factory):
    cfg = TinyModelConfig(n_layers=2, hidden=32, d_ff=64, n_heads=2, vocab_size=400, max_positions=CTX)
    return build_tiny(world_dir, cfg, tmp_path_factory.mktemp("ctx") / "model")


@pytest.fixture
def longest_input(monkeypatch):
    """Records the longest token sequence any embedding layer sees (every model forward starts there)."""
    seen = [0]
    orig = torch.nn.Embedding.forward

    def forward(self, x):
        seen[0] = max(seen[0], x.shape[-1])
        return orig(self, x)

    monkeypatch.setattr(torch.nn.Embedding, "forward", forward)
    return seen


def _with_long_answer(rows, i=1):
    rows = [dict(r) for r in rows]
    rows[i]["answer"] = LONG
    return rows


def _finite(x):
    return x is None or (isinstance(x, float) and math.isfinite(x))


def test_encode_fit_cuts_like_encode_qa(short_ctx_model_dir):
    from loc_unlearn.data.formatting import context_length, encode_fit, encode_qa

    model, tok = load_model(str(short_ctx_model_dir))
    assert context_length(model) == CTX and context_length(model, 32) == 32 and context_length(model, 999) == CTX
    it, cut = encode_fit(tok, "Who?", LONG, CTX)
    assert cut and len(it["input_ids"]) == CTX and it["input_ids"][-1] != tok.eos_token_id
    assert it == encode_qa(tok, "Who?", LONG, CTX)
    short, cut = encode_fit(tok, "Who?", "Nobody.", CTX)
    assert not cut and short["input_ids"][-1] == tok.eos_token_id and short == encode_qa(tok, "Who?", "Nobody.")


def test_evaluation_cuts_long_answers_to_the_context_and_counts_them(short_ctx_model_dir, world_dir, longest_input):
    from loc_unlearn.evaluate.tofu import evaluate_model

    model, tok = load_model(str(short_ctx_model_dir))
    assert model.config.max_position_embeddings == CTX
    sets = {"forget": _with_long_answer(load_split(world_dir, "forget10_perturbed")),
            "retain": load_split(world_dir, "retain_perturbed")[:6]}
    assert len(tok(LONG)["input_ids"]) > 20 * CTX
    met = evaluate_model(model, tok, sets, EvalConfig(batch_size=4, max_new_tokens=4))
    assert 0 < longest_input[0] <= CTX  # no batch past the model's context: memory and time are bounded
    assert met["truncated"] == {"forget": 1, "retain": 0}
    assert met["forget"]["truncated"] == 1 and met["forget"]["max_length"] == CTX
    for k in ("FS", "RS", "MU"):
        assert _finite(met[k]), k
    for s in ("forget", "retain"):
        assert all(math.isfinite(v) for v in met[s]["es_per"] + met[s]["nll"] + met[s]["truth_ratio_raw"])


def test_eval_max_length_below_the_context(short_ctx_model_dir, world_dir, longest_input):
    from loc_unlearn.evaluate.token_metrics import token_metrics

    model, tok = load_model(str(short_ctx_model_dir))
    tm = token_metrics(model, tok, _with_long_answer(load_split(world_dir, "forget10")), max_length=24)
    assert tm["truncated"] >= 1 and tm["max_length"] == 24 and longest_input[0] <= 24
    assert all(n <= 24 for n in tm["n_answer"])


def test_a_question_longer_than_the_context_is_a_clear_error(short_ctx_model_dir, world_dir):
    from loc_unlearn.errors import DataError
    from loc_unlearn.evaluate.tofu import evaluate_model

    model, tok = load_model(str(short_ctx_model_dir))
    rows = [dict(r) for r in load_split(world_dir, "forget10_perturbed")[:3]]
    rows[2]["question"] = LONG[:1000]  # a few hundred tokens
    with pytest.raises(DataError, match=r"eval set 'forget': row 3 field 'answer': question .* alone takes \d+ "
                                        rf"tokens; max_length={CTX}"):
        evaluate_model(model, tok, {"forget": rows, "retain": rows}, EvalConfig(rouge=False))


def test_training_cuts_to_the_model_context_and_reports_it(short_ctx_model_dir, world_dir, tmp_path, longest_input):
    from loc_unlearn.train.loop import train

    model, tok = load_model(str(short_ctx_model_dir))
    forget = _with_long_answer(load_split(world_dir, "forget10"))
    retain = load_split(world_dir, "retain90")[:8]
    tc = TrainConfig(lr=1e-3, epochs=1, batch_size=3, warmup_epochs=0, checkpoint_every=0, max_length=512)
    res = train(model, tok, forget, retain, "graddiff", tc, tmp_path / "train")
    assert 0 < longest_input[0] <= CTX  # train.max_length=512 is more than the model has positions
    assert res.truncated == {"forget": 1}
    assert all(math.isfinite(r["loss"]) for r in res.log)


def test_cli_evaluate_and_unlearn_on_a_folder_with_a_long_answer(short_ctx_model_dir, world_dir, tmp_path,
                                                                 longest_input):
    """The issue's reproduction: a local TOFU folder, `loc-unlearn evaluate` then `unlearn`."""
    from loc_unlearn.cli import main

    data = shutil.copytree(world_dir, tmp_path / "data")
    for split in ("forget10", "forget10_perturbed"):
        f = data / f"{split}.json"
        rows = _with_long_answer([json.loads(line) for line in f.read_text().splitlines()])
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = [f"data.source={data}", f"runs_dir={tmp_path / 'runs'}", "eval.max_new_tokens=4", "eval.batch_size=8"]
    assert main(["evaluate", f"model={short_ctx_model_dir}", f"out={tmp_path / 'eval'}", *common]) == 0
    met = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert met["truncated"]["forget"] == 1 and sum(met["truncated"].values()) == 1
    assert longest_input[0] <= CTX
    assert main(["unlearn", f"model={short_ctx_model_dir}", f"reference={short_ctx_model_dir}", "method=npo",
                 "unlearn.train.epochs=1", "unlearn.train.batch_size=3", "unlearn.train.checkpoint_every=1",
                 "unlearn.train.max_length=512", *common]) == 0
    (run,) = [d for d in (tmp_path / "runs" / "unlearn").iterdir() if (d / "manifest.json").is_file()]
    um = json.loads((run / "metrics.json").read_text())
    assert um["train_truncated"]["forget"] == 1  # (retain answers of this world exceed 48 tokens too)
    assert len(um["trajectory"]) >= 2 and all(_finite(p["FS"]) and _finite(p["RS"]) for p in um["trajectory"])
    assert longest_input[0] <= CTX
