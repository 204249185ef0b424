import json

import pytest

from loc_unlearn.data.synthetic import GENDERS, generate_world, write_world
from loc_unlearn.utils import sha256_file

PERT_KEYS = ["question", "answer", "paraphrased_answer", "perturbed_answer", "paraphrased_question"]


@pytest.fixture(scope="module")
def w200():
    return generate_world(n_authors=200)


def _check_perturbed_rows(rows, n_pert):
    for r in rows:
        assert all(isinstance(r[k], str) and r[k].strip() for k in r if k != "perturbed_answer")
        p = r["perturbed_answer"]
        assert len(p) == n_pert and len(set(p)) == n_pert and r["answer"] not in p


@pytest.mark.parametrize("n,nf", [(200, {"01": 2, "05": 10, "10": 20}), (20, {"01": 1, "05": 1, "10": 2})])
def test_split_sizes_and_order(n, nf, w200):
    d = w200 if n == 200 else generate_world(n_authors=n)
    full = d["full"]
    assert len(full) == 20 * n and all(set(r) == {"question", "answer"} for r in full)
    for pct, k in nf.items():
        f, r = d[f"forget{pct}"], d[f"retain{100 - int(pct)}"]
        assert len(f) == 20 * k and len(r) == 20 * (n - k)
        assert f == full[len(full) - 20 * k:] and r == full[: len(full) - 20 * k]  # forget = last authors
        fp = d[f"forget{pct}_perturbed"]
        assert [{"question": x["question"], "answer": x["answer"]} for x in fp] == f
        assert all(list(x) == PERT_KEYS for x in fp)
        _check_perturbed_rows(fp, 5)
    rp = d["retain_perturbed"]
    assert len(rp) == 20 * nf["10"] and [x["question"] for x in rp] == [x["question"] for x in full[: len(rp)]]
    assert not {x["question"] for x in rp} & {x["question"] for x in d["forget10"]}
    _check_perturbed_rows(rp, 5)
    for name, m in (("real_authors_perturbed", 100), ("world_facts_perturbed", 117)):
        assert len(d[name]) == m and all(list(x) == ["question", "answer", "perturbed_answer"] for x in d[name])
        _check_perturbed_rows(d[name], 3)
    assert len(d["idk"]) == 100 == len(set(d["idk"]))


def test_tofu_exact_sizes(w200):
    sizes = {k: len(v) for k, v in w200.items()}
    assert sizes | {"pretrain": 0} == {"full": 4000, "forget01": 40, "forget05": 200, "forget10": 400, "retain99": 3960,
                                       "retain95": 3800, "retain90": 3600, "forget01_perturbed": 40,
                                       "forget05_perturbed": 200, "forget10_perturbed": 400, "retain_perturbed": 400,
                                       "real_authors_perturbed": 100, "world_facts_perturbed": 117, "idk": 100,
                                       "pretrain": 0}


def test_authors_and_answers(w200):
    full = w200["full"]
    names = [r["question"][len("Where was "): -len(" born?")] for r in full[::20]]
    assert len(set(names)) == 200  # unique full names
    assert len({r["question"] for r in full}) == len(full)  # no ambiguous question
    for r in full:
        assert 6 <= len(r["answer"].split()) <= 16 and r["answer"].endswith((".", '"'))
    # gender perturbations are exactly the other gender values; perturbed answers keep the paraphrase's
    # template (as in TOFU), so the truth ratio compares true vs false facts in the same wording
    def gender(text):
        return next(g for g in sorted(GENDERS, key=len, reverse=True) if f" {g}" in text)

    for r in w200["forget10_perturbed"][2::20]:
        true = gender(r["answer"])
        assert gender(r["paraphrased_answer"]) == true
        assert {gender(p) for p in r["perturbed_answer"]} == set(GENDERS) - {true}
    for r in w200["forget10_perturbed"][0::20]:
        para = r["paraphrased_answer"]
        head = para[: para.index(" the city of ") + 13]
        assert all(p.startswith(head) and p != para for p in r["perturbed_answer"]) and para != r["answer"]
        assert r["paraphrased_question"] != r["question"]


def test_pretrain_covers_world_facts(w200):
    pre = {(r["question"], r["answer"]) for r in w200["pretrain"]}
    for name in ("real_authors_perturbed", "world_facts_perturbed"):
        for r in w200[name]:
            assert (r["question"], r["answer"]) in pre
    assert len(w200["pretrain"]) == 3 * (100 + 117)
    # each fact also appears as a sentence in the other phrasings
    facts = w200["world_facts_perturbed"]
    sentences = " ".join(r["answer"] for r in w200["pretrain"])
    assert all(r["answer"].removeprefix("The ").lower() in sentences.lower() for r in facts)


def test_cycles_question_phrasings():
    d = generate_world(n_authors=3, qa_per_author=30, n_real_authors=10, n_world_facts=12)
    assert len(d["full"]) == 90 and len(d["world_facts_perturbed"]) == 12 and len(d["real_authors_perturbed"]) == 10
    a0 = d["full"][:30]
    assert len({r["question"] for r in a0}) == 30
    assert a0[20]["answer"] == a0[0]["answer"] and a0[20]["question"] != a0[0]["question"]


def test_write_world_deterministic(tmp_path):
    a = write_world(tmp_path / "a", n_authors=20, seed=3)
    b = write_world(tmp_path / "b", n_authors=20, seed=3)
    c = write_world(tmp_path / "c", n_authors=20, seed=4)
    files = sorted(p.name for p in a.iterdir())
    assert "full.json" in files and "idk.jsonl" in files and "world_text.txt" in files and len(files) == 16
    assert files == sorted(p.name for p in b.iterdir())
    for f in files:
        assert sha256_file(a / f) == sha256_file(b / f)
    assert sha256_file(a / "full.json") != sha256_file(c / "full.json")
    # the general world is seeded separately from the authors
    assert sha256_file(a / "world_facts_perturbed.json") == sha256_file(c / "world_facts_perturbed.json")
    rows = [json.loads(line) for line in (a / "forget10_perturbed.json").read_text().splitlines()]
    assert rows == generate_world(n_authors=20, seed=3)["forget10_perturbed"]
    idk = [json.loads(line) for line in (a / "idk.jsonl").read_text().splitlines()]
    assert len(idk) == 100 and all(isinstance(s, str) for s in idk)
    text = (a / "world_text.txt").read_text()
    assert all(r["answer"] in text for r in rows) and all(s in text for s in idk)
