"""evaluate_model (docs/metrics.md): FS/RS, Prob, truth ratio, FQ and MU against independent computations."""
import json
import math

import numpy as np
import pytest
from scipy import stats

from loc_unlearn.config import EvalConfig
from loc_unlearn.errors import UserError
from loc_unlearn.evaluate.tofu import evaluate_model, format_table, forget_quality, model_utility

from helpers import direct_metrics


@pytest.fixture(scope="module")
def setup(memorized):
    model, tok, rows = memorized
    forget = rows[18:30]  # half memorized, half not
    retain = rows[:10]
    # real-author style rows: question, answer, 3 perturbed answers, no paraphrase
    ra = [{"question": r["question"], "answer": r["answer"], "perturbed_answer": r["perturbed_answer"]} for r in rows[30:36]]
    cfg = EvalConfig(batch_size=4, max_new_tokens=24, rouge=True)
    return model, tok, {"forget": forget, "retain": retain, "real_authors": ra}, cfg


def test_evaluate_model_against_direct(setup):
    model, tok, sets, cfg = setup
    ref_tr = [0.5, 1.2, 0.9, 2.0, 0.1, 0.7]
    m = evaluate_model(model, tok, sets, cfg, reference_truth_ratios=ref_tr)
    json.dumps(m)  # JSON-serializable

    d = {k: [direct_metrics(model, tok, r["question"], r["answer"]) for r in rows] for k, rows in sets.items()}
    assert m["FS"] == pytest.approx(1 - np.mean([x[0] for x in d["forget"]]))
    assert m["RS"] == pytest.approx(np.mean([x[0] for x in d["retain"]]))
    assert 0.0 < m["FS"] < 1.0
    assert m["retain"]["prob"] == pytest.approx(np.mean([math.exp(-x[2]) for x in d["retain"]]), rel=1e-4)

    # truth ratio, forget: R = exp(-mean NLL_pert) / exp(-NLL_para); report mean min(R, 1/R)
    R = []
    for r in sets["forget"]:
        para = direct_metrics(model, tok, r["question"], r["paraphrased_answer"])[2]
        pert = np.mean([direct_metrics(model, tok, r["question"], a)[2] for a in r["perturbed_answer"]])
        R.append(math.exp(-pert) / math.exp(-para))
    assert m["forget"]["truth_ratio_raw"] == pytest.approx(R, rel=1e-3)
    assert m["forget"]["truth_ratio"] == pytest.approx(np.mean([min(x, 1 / x) for x in R]), rel=1e-3)

    # real authors: Prob normalized over options; truth ratio base = answer, mean max(0, 1-R)
    probs, tr = [], []
    for r in sets["real_authors"]:
        pa = math.exp(-direct_metrics(model, tok, r["question"], r["answer"])[2])
        pp = [math.exp(-direct_metrics(model, tok, r["question"], a)[2]) for a in r["perturbed_answer"]]
        probs.append(pa / (pa + sum(pp)))
        tr.append(max(0.0, 1 - math.exp(-np.mean([-math.log(x) for x in pp])) / pa))
    assert m["real_authors"]["prob"] == pytest.approx(np.mean(probs), rel=1e-4)
    assert m["real_authors"]["truth_ratio"] == pytest.approx(np.mean(tr), rel=1e-3, abs=1e-6)

    # FQ = ks_2samp on the same truth ratios (floored, log10)
    p = stats.ks_2samp(m["forget"]["truth_ratio_raw"], ref_tr).pvalue
    assert m["FQ"] == pytest.approx(max(p, 1e-300)) and m["log10_FQ"] == pytest.approx(math.log10(max(p, 1e-300)))

    # MU = hmean of the numbers of the sets present (no world_facts here) and says so
    nums = [m[s][k] for s in ("retain", "real_authors") for k in ("prob", "rouge_l", "truth_ratio")]
    assert m["MU"] == pytest.approx(stats.hmean(nums))
    assert m["MU_sets"] == ["retain", "real_authors"] and "world_facts" in m["MU_note"]
    assert m["retain"]["rouge_l"] > m["forget"]["rouge_l"] - 1e-9  # retained rows are memorized
    table = format_table(m)
    assert "forget" in table and "real_authors" in table and "MU" in table


def test_fq_reference_from_metrics_dict_and_absent(setup):
    model, tok, sets, cfg = setup
    cfg = EvalConfig(batch_size=8, rouge=False)
    m0 = evaluate_model(model, tok, {"forget10_perturbed": sets["forget"], "retain_perturbed": sets["retain"]}, cfg)
    assert m0["FQ"] is None and m0["log10_FQ"] is None
    # comparing a model with itself: identical samples -> KS p-value 1
    m1 = evaluate_model(model, tok, {"forget": sets["forget"], "retain": sets["retain"]}, cfg, reference_truth_ratios=m0)
    assert m1["FQ"] == pytest.approx(1.0)
    with pytest.raises(UserError):
        evaluate_model(model, tok, {"forget": sets["forget"]}, cfg)
    with pytest.raises(UserError):
        evaluate_model(model, tok, {"forget": sets["forget"], "bogus": sets["retain"]}, cfg)


def test_forget_quality_floor_and_mu_nine_numbers():
    a = np.linspace(1e-3, 1e-2, 400)
    b = np.linspace(10, 20, 400)
    fq, lfq = forget_quality(a, b)
    assert fq == pytest.approx(max(stats.ks_2samp(a, b).pvalue, 1e-300))
    assert lfq == pytest.approx(math.log10(fq)) and lfq < -100
    rng = np.random.default_rng(0)
    vals = rng.uniform(0.1, 0.9, size=9)
    sets = {s: dict(zip(("prob", "rouge_l", "truth_ratio"), vals[3 * i: 3 * i + 3]))
            for i, s in enumerate(("retain", "real_authors", "world_facts"))}
    mu, used, terms, note = model_utility(sets)
    assert mu == pytest.approx(stats.hmean(vals)) and len(terms) == 9 and "missing" not in note
    sets["retain"]["prob"] = 0.0
    assert model_utility(sets)[0] == 0.0
