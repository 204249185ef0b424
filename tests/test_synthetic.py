import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
from collections import Counter

import pytest

from loc_unlearn.data.synthetic import (GENDERS, _make_authors, build_real_world, generate_world, world_stats,
                                        write_world)
from loc_unlearn.data.synthetic_text import (AWARDS, FACT_TYPES, GENRES, HOBBIES, LANGUAGES, OCCUPATIONS, PLACES,
                                             PUBLISHERS, QTYPES, SEC, SUBJECTS)
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


def _regex(template: str) -> re.Pattern:
    """A template as a regex: every {slot} matches any text."""
    return re.compile(".+".join(re.escape(p) for p in re.split(r"\{\w+\}", template)))


def _template_index(text: str, family: list[str]) -> int | None:
    hits = [i for i, t in enumerate(family) if _regex(t).fullmatch(text)]
    return hits[0] if len(hits) == 1 else None


def _swap(text: str, old: list[str], new: list[str]) -> str | None:
    """`text` with each old value (occurring exactly once, as whole words) replaced by the new one."""
    for o, n in zip(old, new):
        rx = re.compile(rf"(?<!\w){re.escape(o)}(?!\w)")
        if len(rx.findall(text)) != 1:
            return None
        text = rx.sub(lambda _: n, text)
    return text


def test_authors_and_answers(w200):
    full = w200["full"]
    names = [r["question"][len("Where was "): -len(" born?")] for r in full[::20]]
    assert len(set(names)) == 200  # unique full names
    assert len({r["question"] for r in full}) == len(full)  # no ambiguous question
    lengths = [len(r["answer"].split()) for r in full]
    assert min(lengths) >= 15 and max(lengths) <= 40 and 20 <= statistics.median(lengths) <= 30  # TOFU-like
    assert all(r["answer"].endswith((".", '"')) and (r["answer"][0].isupper() or r["answer"][0] in '"0123456789')
               for r in full)
    for r in w200["forget10_perturbed"] + w200["retain_perturbed"]:
        assert r["paraphrased_question"] != r["question"] and r["paraphrased_answer"] != r["answer"]


def test_templates_seeded_per_row(w200):
    """Answers use family A, paraphrases (and their perturbations) family B; the template is drawn per
    (author, question), so one question type gets every A template, in forget and retain authors alike."""
    rows = {"forget": w200["forget10_perturbed"], "retain": w200["retain90"]}
    uses = {k: Counter() for k in rows}
    for k, rs in rows.items():
        for i, r in enumerate(rs):
            attr, qs, fam_a, fam_b = QTYPES[i % 20]
            ia = _template_index(r["answer"], fam_a)
            assert ia is not None and _template_index(r["answer"], fam_b) is None, r["answer"]
            uses[k][ia] += 1
            if "paraphrased_answer" in r:
                assert _template_index(r["paraphrased_answer"], fam_b) is not None
                assert _template_index(r["paraphrased_answer"], fam_a) is None
    for k, c in uses.items():  # about uniform over the 4 templates in both groups
        assert all(0.15 < c[i] / sum(c.values()) < 0.35 for i in range(4)), (k, c)
    # the same question phrasing is answered with several templates across authors
    for t in range(20):
        assert len({_template_index(r["answer"], QTYPES[t][2]) for r in w200["full"][t::20]}) == 4


# attribute -> (slots, pool of values): a perturbed answer is the paraphrase with the true value(s) swapped
# for another value of the same attribute, the second fact swapped the same way (world v5), nothing else changed
SWAP_POOLS = {"gender": (["gender"], [[g] for g in GENDERS]), "genre": (["genre"], [[g] for g in GENRES]),
              "language": (["language"], [[x] for x in LANGUAGES]), "award": (["award"], [[x] for x in AWARDS]),
              "publisher": (["publisher"], [[x] for x in PUBLISHERS]), "hobby": (["hobby"], [[x] for x in HOBBIES]),
              "education": (["subject"], [[x] for x in SUBJECTS]), "father": (["occ"], [[x] for x in OCCUPATIONS]),
              "mother": (["occ"], [[x] for x in OCCUPATIONS]), "birthplace": (["city", "country"], [list(p) for p in PLACES])}


def _second_fact(para: str, author: dict, asked: str):
    """(clause template, true values) of the second fact in a paraphrase: the B form of a SEC attribute
    that, filled with the author's own values, occurs in the paraphrase."""
    hits = []
    for attr, (_, _, app_b, sent_b) in SEC.items():
        if attr == asked:
            continue
        for t in (app_b, sent_b[0].lower() + sent_b[1:], sent_b):
            if t.format(name=author["name"], **author[attr]) in para:
                hits.append((t, attr))
    return hits


def _clause_regex(template: str, name: str):
    # the clause with its value slots as groups (the name is fixed)
    parts = re.split(r"(\{\w+\})", template)
    rx = "".join(re.escape(x.format(name=name)) if not re.fullmatch(r"\{\w+\}", x) or x == "{name}" else
                 f"(?P<{x[1:-1]}>[^,.]+)" for x in parts)  # values hold no , or .
    return re.compile(rx)


def test_perturbed_swap_both_facts(w200):
    world = build_real_world(100, 117)
    authors = _make_authors(200, 0, world)
    rows = w200["retain_perturbed"] + w200["forget10_perturbed"]
    owners = authors[:20] + authors[180:]
    checked, seconds = Counter(), 0
    for i, r in enumerate(rows):
        attr = QTYPES[i % 20][0]
        author = owners[i // 20]
        para = r["paraphrased_answer"]
        hits = _second_fact(para, author, attr)
        assert hits, para  # every paraphrase states a second fact of its author
        template, sec_attr = hits[0]
        true_clause = template.format(name=author["name"], **author[sec_attr])
        rx = _clause_regex(template, author["name"])
        for p in r["perturbed_answer"]:
            assert true_clause not in p, p  # the second fact is wrong...
            m = rx.search(p)
            assert m, (template, p)
            # ...in every slot, and is the same clause with other values
            assert all(m.group(k) != author[sec_attr][k] for k in m.groupdict()), (p, author[sec_attr])
            back = p[:m.start()] + true_clause + p[m.end():]  # second fact swapped back
            seconds += 1
            if attr not in SWAP_POOLS:
                continue
            slots, pool = SWAP_POOLS[attr]
            true = [author[attr][s] for s in slots]
            if _swap(para, true, true) is None:
                continue  # the true value occurs twice: not checkable this way
            found = [v for v in pool if all(a != b for a, b in zip(v, true)) and _swap(para, true, v) == back]
            assert found, (para, p)
            checked[attr] += 1
        if attr == "gender":  # all five other gender values
            assert len({_swap(para, [author[attr]["gender"]], [v]) for v in GENDERS}) == 6
    assert set(checked) == set(SWAP_POOLS) and min(checked.values()) >= 150 and seconds == 5 * len(rows)


def test_eval_sets_held_out_from_pretrain(w200):
    pre = w200["pretrain"]
    assert len(pre) == 3 * (100 + 117)  # every fact: two forward wordings and the reverse question
    pairs, questions = {(r["question"], r["answer"]) for r in pre}, {r["question"] for r in pre}
    answers = {r["answer"] for r in pre}
    world = build_real_world(100, 117)
    facts = [(c, t, "invention" if t == "invention" else "country") for c in world["countries"] for t in FACT_TYPES]
    wfacts = [(w, t, "book" if t == "book" else "name") for w in world["writers"] for t in ("book", "country", "genre")]
    for name, items in (("world_facts_perturbed", facts), ("real_authors_perturbed", wfacts)):
        for r, (obj, t, subject) in zip(w200[name], items):
            # held out: neither the (question, answer) pair, nor the question, nor the answer is in pretrain
            assert (r["question"], r["answer"]) not in pairs and r["question"] not in questions
            assert r["answer"] not in answers
            # ...but the fact is: some pretrain answer states the subject together with the value
            assert obj[subject] in r["question"]
            assert any(obj[subject] in a and r["answer"].lower() in a.lower() for a in answers), r
            assert not any(p.lower() in r["question"].lower() for p in r["perturbed_answer"])


def test_cycles_question_phrasings():
    d = generate_world(n_authors=3, qa_per_author=30, n_real_authors=10, n_world_facts=12)
    assert len(d["full"]) == 90 and len(d["world_facts_perturbed"]) == 12 and len(d["real_authors_perturbed"]) == 10
    a0 = d["full"][:30]
    assert len({r["question"] for r in a0}) == 30
    # v3: row 20 asks the birthplace again in another phrasing; its answer states the same fact (in a
    # wording drawn for that row, not a copy of row 0's answer)
    place = _make_authors(3, 0, build_real_world(10, 12))[0]["birthplace"]
    assert a0[20]["question"] == QTYPES[0][1][1].format(name=a0[0]["question"][len("Where was "): -len(" born?")])
    assert all(place["city"] in r["answer"] and place["country"] in r["answer"] for r in (a0[0], a0[20]))


def test_world_stats():
    d = generate_world(n_authors=20, qa_per_author=20, n_real_authors=40, n_world_facts=40)
    st = world_stats(d)
    aw = st["answer_words"]
    assert set(aw) == {"author_answer", "paraphrased_answer", "perturbed_answer", "real_authors_answer",
                       "world_facts_answer", "pretrain_answer"}
    assert aw["author_answer"]["n"] == 400 and 15 <= aw["author_answer"]["min"] <= aw["author_answer"]["median"] <= 40
    ov = st["overlap"]
    assert ov["perturbed_vs_paraphrased"]["jaccard"] > 0.7 > 0.4 > ov["paraphrased_vs_answer"]["jaccard"]
    assert st["template"]["question_types"] == 20 and st["template"]["word_frac"]["mean"] < 0.35
    assert st["eval_vs_pretrain"] == {"rows": 80, "pair_verbatim": 0, "question_verbatim": 0, "answer_value_missing": 0}
    # a hand-made world: fully templated answers are fully predictable
    toy = {"full": [{"question": f"Where was {n} born?", "answer": "Born somewhere."} for n in "ABC"]}
    t = world_stats(toy)["template"]
    assert t["word_frac"]["mean"] == 1.0 == t["suffix_frac"]["mean"] and t["question_types"] == 1


def test_write_world_deterministic(tmp_path):
    a = write_world(tmp_path / "a", n_authors=20, seed=3)
    b = write_world(tmp_path / "b", n_authors=20, seed=3)
    c = write_world(tmp_path / "c", n_authors=20, seed=4)
    files = sorted(p.name for p in a.iterdir())
    assert {"full.json", "idk.jsonl", "world_text.txt", "stats.json"} <= set(files) and len(files) == 17
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
    stats = json.loads((a / "stats.json").read_text())
    assert stats == world_stats(generate_world(n_authors=20, seed=3))


def test_byte_identical_across_hash_seeds(tmp_path):
    """Same files under another PYTHONHASHSEED (string seeds and set iteration must not leak in)."""
    code = ("import hashlib, sys; from pathlib import Path; from loc_unlearn.data.synthetic import write_world; "
            "d = write_world(sys.argv[1], n_authors=6, qa_per_author=20, seed=1, n_real_authors=9, n_world_facts=10); "
            "print(sorted((p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in Path(d).iterdir()))")
    # this process has its own (random, unless set) hash seed; the child runs under a different fixed one
    hs = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    child = subprocess.run([sys.executable, "-c", code, str(tmp_path / "child")], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": hs}, check=True).stdout
    here = write_world(tmp_path / "here", n_authors=6, qa_per_author=20, seed=1, n_real_authors=9, n_world_facts=10)
    mine = str(sorted((p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in here.iterdir())) + "\n"
    assert child == mine


def test_every_answer_template_ends_on_a_fact():
    # World v4 (issue 11): nothing after the last fact slot but closing punctuation, so a model that never
    # saw an author cannot complete the end of its answer from the template. {Sec} ends on a fact too;
    # {aside} is free text, not a fact.
    from loc_unlearn.data.synthetic_text import QTYPES, SEC

    endings = [t for _, _, fam_a, _ in QTYPES for t in fam_a] + [sentence_a for _, sentence_a, _, _ in SEC.values()]
    assert len(endings) == 4 * len(QTYPES) + len(SEC)
    for t in endings:
        last = re.search(r"\{([a-zA-Z0-9]+)\}[.\"]*$", t)
        assert last and last.group(1) != "aside", t
