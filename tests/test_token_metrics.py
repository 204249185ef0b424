"""Token metrics (docs/metrics.md) against independent computations, on a tiny Llama that memorized PART
of a small QA set (so ES spreads over 0..1)."""
import math

import pytest
import torch
import torch.nn.functional as F

from loc_unlearn.data.formatting import encode_qa
from loc_unlearn.evaluate.generation import generate, prompt_ids, rouge_l_recall
from loc_unlearn.evaluate.token_metrics import answer_stats, es_from_logits, token_metrics

from helpers import direct_metrics, es_by_prefix_search


def greedy(model, ids, n):
    """Plain greedy decoding of n tokens (full recompute each step, no cache, no padding)."""
    x = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            nxt = model(input_ids=x).logits[0, -1].argmax()
            x = torch.cat([x, nxt.view(1, 1)], dim=1)
    return x[0, len(ids):].tolist()


def es_by_generation(model, tok, row):
    """ES by greedy generation with a prefix search (helpers.es_by_prefix_search), plain recompute decoding."""
    it = encode_qa(tok, row["question"], row["answer"])
    return es_by_prefix_search(it, lambda ids, target: greedy(model, ids, len(target)) == target)


def test_es_one_pass_equals_generation_search(memorized):
    model, tok, rows = memorized
    tm = token_metrics(model, tok, rows, batch_size=8)
    sample = list(range(0, len(rows), 2))
    gen = [es_by_generation(model, tok, rows[i]) for i in sample]
    for i, g in zip(sample, gen):
        assert tm["es"][i] == pytest.approx(g, abs=1e-12), f"row {i}"
    # The fixture must actually spread ES: some memorized, some not, some partial.
    es = tm["es"]
    assert max(es) == 1.0 and min(es) < 0.5
    assert any(0.0 < e < 1.0 for e in es)
    assert sum(es[:24]) / 24 > sum(es[24:]) / 12 + 0.3


def test_em_nll_truth_terms_match_direct(memorized):
    model, tok, rows = memorized
    sub = rows[18:30]
    tm = token_metrics(model, tok, sub, batch_size=5)
    for i, r in enumerate(sub):
        es, em, nll = direct_metrics(model, tok, r["question"], r["answer"])
        assert tm["es"][i] == pytest.approx(es)
        assert tm["em"][i] == pytest.approx(em)
        assert tm["nll"][i] == pytest.approx(nll, rel=1e-4, abs=1e-6)
        assert tm["nll_paraphrased"][i] == pytest.approx(direct_metrics(model, tok, r["question"], r["paraphrased_answer"])[2], rel=1e-4, abs=1e-6)
        for j, pa in enumerate(r["perturbed_answer"]):
            assert tm["nll_perturbed"][i][j] == pytest.approx(direct_metrics(model, tok, r["question"], pa)[2], rel=1e-4, abs=1e-6)
    assert len(set(round(v, 6) for v in tm["em"])) > 2


def test_padding_and_batch_size_do_not_change_results(memorized):
    model, tok, rows = memorized
    sub = rows[10:30]  # mixed answer lengths ("books." every third row), mixed digits
    lens = {len(encode_qa(tok, r["question"], r["answer"])["input_ids"]) for r in sub}
    assert len(lens) > 1
    big = token_metrics(model, tok, sub, batch_size=20)
    one = token_metrics(model, tok, sub, batch_size=1)
    assert big["es"] == one["es"] and big["em"] == one["em"]
    for k in ("nll", "nll_paraphrased"):
        assert big[k] == pytest.approx(one[k], rel=1e-5, abs=1e-6)
    for a, b in zip(big["nll_perturbed"], one["nll_perturbed"]):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


def test_es_from_logits_hand_cases_and_ou_floor():
    # one row, prompt of 2 tokens, answer of 4 tokens, then eos (excluded), then pad.
    V = 5
    labels = torch.tensor([[-100, -100, 1, 2, 3, 4, 0, -100]])
    mm = torch.tensor([[0, 0, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)

    def logits_predicting(preds):
        lg = torch.zeros(1, 8, V)
        for t, tok_id in enumerate(preds):
            lg[0, t, tok_id] = 5.0
        return lg

    # predictions at t-1 for tokens 2..5: correct = [1,2,3,4]
    cases = {(1, 2, 3, 4): (1.0, 1.0), (0, 2, 3, 4): (0.75, 0.75), (1, 0, 3, 4): (0.5, 0.75),
             (1, 2, 3, 0): (0.0, 0.75), (0, 0, 0, 0): (0.0, 0.0)}
    for preds, (es, em) in cases.items():
        lg = logits_predicting([0, *preds, 0, 0, 0])  # position 1 predicts token 2, ...
        st = answer_stats(lg, labels, mm)
        assert st["es"].item() == pytest.approx(es) and st["em"].item() == pytest.approx(em)
        ou = es_from_logits(lg, labels, mm, es_floor="ou").item()
        assert ou == pytest.approx(es if preds[-1] == 4 else 0.25)  # last token wrong -> 1/T
        # the same from only the trailing logits (logits_to_keep)
        assert es_from_logits(lg[:, 1:], labels, mm).item() == pytest.approx(es)


def test_ou_floor_on_model(memorized):
    model, tok, rows = memorized
    a = token_metrics(model, tok, rows, batch_size=12)
    b = token_metrics(model, tok, rows, batch_size=12, es_floor="ou")
    for e, f, n in zip(a["es"], b["es"], a["n_answer"]):
        assert f == pytest.approx(max(e, 1.0 / n))
    # On an untrained model the last token is usually wrong, so the floor must bite there.
    from transformers import LlamaForCausalLM

    torch.manual_seed(1)
    fresh = LlamaForCausalLM(model.config).eval()
    a = token_metrics(fresh, tok, rows[:8], batch_size=8)
    b = token_metrics(fresh, tok, rows[:8], batch_size=8, es_floor="ou")
    assert all(f == pytest.approx(max(e, 1.0 / n)) for e, f, n in zip(a["es"], b["es"], a["n_answer"]))
    assert any(f > e for e, f in zip(a["es"], b["es"]))


def test_generation_matches_plain_greedy_and_rouge(memorized):
    model, tok, rows = memorized
    sub = rows[20:28]
    gens = generate(model, tok, [r["question"] for r in sub], max_new_tokens=20, batch_size=4)
    for r, g in zip(sub, gens):
        ids = greedy(model, prompt_ids(tok, r["question"]), 20)
        if tok.eos_token_id in ids:
            ids = ids[: ids.index(tok.eos_token_id)]
        assert g == tok.decode(ids, skip_special_tokens=True).strip()
    from rouge_score import rouge_scorer

    sc = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    refs = [r["answer"] for r in sub]
    assert rouge_l_recall(gens, refs) == [sc.score(r, g)["rougeL"].recall for g, r in zip(gens, refs)]
    assert rouge_l_recall(["writes poems"], ["he wrote poem"])[0] == pytest.approx(1 / 3)  # stemming: poems~poem
