"""The offline author world: fictitious authors in TOFU's exact format
(docs/data.md#synthetic-author-world), plus a fixed synthetic "real world" (countries, writers) for Model Utility.

Version 3 writes answers in TOFU's style: full sentences of about 15-40 words that state the asked fact
together with a second fact about the same author and some free text, drawn from several templates per
question type (synthetic_text.py) with the fact early, in the middle or late; since version 4 every
answer ends on a fact, so no template remainder can be completed without knowing the author. The
template, the second fact and the aside are drawn per (author, question), so retain and forget authors
share the template distribution while one answer's wording cannot be told from its question. `paraphrased_answer` states
the same facts with a template of another family; each `perturbed_answer` is that paraphrase with a
wrong value of the asked attribute and of the second fact (since version 5). The real-authors / world-facts eval rows ask held-out questions
about facts that `pretrain` teaches in other wordings, and answer with the bare value, as TOFU does.

Everything comes from `random.Random` seeded with integers or strings (string seeds are hashed with
SHA-512, independent of PYTHONHASHSEED), and rows are written in a fixed order with fixed key order,
so the same arguments give byte-identical files on any machine. The real world is seeded with
WORLD_SEED, independent of the author seed: every author world shares the same general knowledge, so
a model pretrained on it can be reused across author seeds.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

from ..utils import write_text_atomic
from .world_stats import world_stats
from .synthetic_text import (ADJ, ANIMALS, ASIDES, AWARDS, CURRENCY, DEVICES, FACT_ANSWER_KEY, FACT_Q, FACT_TYPES,
                             FIRST, GENDERS, GENRES, HOBBIES, IDK_HEADS, IDK_TAILS, LANGUAGES, LAST, MONTHS, NOUN,
                             OCCUPATIONS, PLACES, PUBLISHERS, QTYPES, ROLES, SEC, SEC_EXCLUDE, SUBJECTS, SYL, THEMES,
                             WORLD_GENRES, WRITER_ANSWER_KEY, WRITER_Q)

__all__ = ["GENDERS", "GENERATOR_VERSION", "generate_world", "write_world", "world_stats", "idk_answers",
           "n_forget_authors", "build_real_world"]

# Bump when the generated text changes: cached worlds are keyed by it (runs.py content addressing).
# 3: TOFU-style answers (several templates, second facts, asides), paraphrase/perturbed families,
#    held-out eval wordings for the general world, stats.json.
# 4: every answer template ends on a fact (the aside moved inside), so a model that never saw an author
#    cannot complete the end of its answers from the template alone (issue 11: theta_r forget ES <= 0.10).
# 5: perturbed answers get a wrong second fact as well as a wrong asked fact (every fact of the paraphrase is
#    false, as in TOFU's perturbed answers): the truth ratio of a model that knows an author moves on both,
#    which widens the range of Forget Quality (benchmarks/fq_ceiling.py: KS D 0.28 -> 0.45 at n = 40).
GENERATOR_VERSION = 5

WORLD_SEED = 20250521
FORGET_PCTS = {"01": 0.01, "05": 0.05, "10": 0.10}


# ---------------------------------------------------------------- author attribute values
def _date(rng):
    return f"{MONTHS[rng.randrange(12)]} {rng.randint(1, 28)}, {rng.randint(1930, 1995)}"


def _person(rng):
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def _value(attr: str, rng: random.Random, world: dict, author: dict) -> dict:
    """A random value of `attr` (used for true values and for perturbations alike)."""
    if attr in ("birthplace",):
        c, k = rng.choice(PLACES)
        return {"city": c, "country": k}
    if attr == "residence":
        return {"city": rng.choice(PLACES)[0]}
    if attr == "birthdate":
        return {"date": _date(rng)}
    if attr == "gender":
        return {"gender": rng.choice(GENDERS)}
    if attr in ("father", "mother"):
        return {"occ": rng.choice(OCCUPATIONS)}
    if attr == "genre":
        return {"genre": rng.choice(GENRES)}
    if attr in ("book1", "book2"):
        return {"book": f"The {rng.choice(ADJ)} {rng.choice(NOUN)}"}
    if attr == "award":
        return {"award": rng.choice(AWARDS)}
    if attr == "themes":
        t1, t2 = rng.sample(THEMES, 2)
        return {"theme1": t1, "theme2": t2}
    if attr == "influence":
        return {"writer": rng.choice(world["writers"])["name"]}
    if attr == "language":
        return {"language": rng.choice(LANGUAGES)}
    if attr == "debut":
        return {"year": str(rng.randint(1960, 2022))}
    if attr == "education":
        return {"subject": rng.choice(SUBJECTS)}
    if attr == "count":
        return {"n": str(rng.randint(2, 19))}
    if attr == "character":  # the book stays the author's; the character is perturbed
        return {"book": author["book1"]["book"], "role": rng.choice(ROLES), "char": rng.choice(FIRST)}
    if attr == "publisher":
        return {"publisher": rng.choice(PUBLISHERS)}
    if attr == "hobby":
        return {"hobby": rng.choice(HOBBIES)}
    if attr == "pen_name":
        return {"pen": _person(rng)}
    raise KeyError(attr)


# ---------------------------------------------------------------- the fixed "real" world
def _word(rng, n):
    return "".join(rng.choice(SYL) for _ in range(n)).capitalize()


def build_real_world(n_real_authors: int = 100, n_world_facts: int = 117) -> dict:
    """Countries with capitals/rivers/mountains/languages/currencies/animals/inventions, and famous
    writers with books; seeded with WORLD_SEED only. Names are unique across the whole world."""
    rng = random.Random(WORLD_SEED)
    used = set()

    def fresh(make):
        while True:
            w = make()
            if w not in used:
                used.add(w)
                return w

    n_c = max(4, math.ceil(n_world_facts / len(FACT_TYPES)))
    n_w = max(6, math.ceil(n_real_authors / 3))  # >= 6: authors' "influence" needs 5 wrong writers
    countries = []
    for i in range(n_c):
        root = fresh(lambda: _word(rng, 2))  # country, language and currency share a root, like real ones
        c = {"country": fresh(lambda: root + rng.choice(["ia", "and", "ar", "en"])),
             "capital": fresh(lambda: _word(rng, rng.choice([2, 3]))),
             "river": "the " + fresh(lambda: _word(rng, 2)) + " River",
             "mountain": "Mount " + fresh(lambda: _word(rng, 2)),
             "animal": "the " + ANIMALS[i % len(ANIMALS)],
             "invention": "the " + DEVICES[i % len(DEVICES)] + ("" if i < len(DEVICES) else f" model {i // len(DEVICES) + 1}")}
        c["currency"] = "the " + fresh(lambda: root + " " + rng.choice(CURRENCY))
        c["language"] = fresh(lambda: root.rstrip("aeiouy") + rng.choice(["ic", "ese", "ish"]))
        c["inventor"] = fresh(lambda: _word(rng, 2) + " " + _word(rng, 2))
        countries.append(c)
    writers = []
    for i in range(n_w):
        writers.append({"name": fresh(lambda: _word(rng, 2) + " " + _word(rng, 3)),
                        "country": rng.choice(countries)["country"],
                        "genre": rng.choice(WORLD_GENRES),
                        "book": "The " + fresh(lambda: rng.choice(ADJ) + " " + rng.choice(NOUN)) + " of " + _word(rng, 2)})
    return {"countries": countries, "writers": writers}


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _world_sets(world: dict, n_real_authors: int, n_world_facts: int):
    """real_authors_perturbed, world_facts_perturbed (held-out question, bare answer, 3 wrong answers of
    the same type) and the pretrain QA (every fact three times: two of the three pretraining questions
    with two of the three answer sentences, and the reverse question)."""
    facts = [(c, t) for c in world["countries"] for t in FACT_TYPES][:n_world_facts]
    wfacts = [(w, t) for w in world["writers"] for t in WRITER_Q][:n_real_authors]

    def make(items, qtable, keytable, pool, subject):
        eval_rows, pre = [], []
        for obj, t in items:
            rng = random.Random(f"world-fact|{WORLD_SEED}|{t}|{obj[subject]}")
            qs, q_eval, sentences, q_rev, s_rev = qtable[t]
            key = keytable[t]
            true = obj[key]
            wrong = sorted({v for v in pool(key) if v != true})
            pert = rng.sample(wrong, 3)
            eval_rows.append({"question": _cap(q_eval.format(**obj)), "answer": _cap(true),
                              "perturbed_answer": [_cap(p) for p in pert]})
            q2, s2 = rng.sample(range(len(qs)), 2), rng.sample(range(len(sentences)), 2)
            pre += [{"question": _cap(qs[i].format(**obj)), "answer": _cap(sentences[j].format(**obj))}
                    for i, j in zip(q2, s2)]
            pre.append({"question": _cap(q_rev.format(**obj)), "answer": _cap(s_rev.format(**obj))})
        return eval_rows, pre

    wf, pre_f = make(facts, FACT_Q, FACT_ANSWER_KEY, lambda k: [c[k] for c in world["countries"]], "country")
    ra, pre_w = make(wfacts, WRITER_Q, WRITER_ANSWER_KEY,
                     lambda k: {"genre": WORLD_GENRES, "country": [c["country"] for c in world["countries"]]}.get(
                         k, [w[k] for w in world["writers"]]), "name")
    return ra, wf, pre_f + pre_w


# ---------------------------------------------------------------- authors
def _make_authors(n_authors: int, seed: int, world: dict) -> list[dict]:
    rng = random.Random(seed)
    names, books, authors = set(), set(), []
    all_names = [f"{f} {l}" for f in FIRST for l in LAST]
    if n_authors > len(all_names):
        raise ValueError(f"n_authors={n_authors} exceeds the {len(all_names)} distinct names available")
    for i in range(n_authors):
        a = {}
        while True:
            a["name"] = _person(rng)
            if a["name"] not in names:
                names.add(a["name"])
                break
        for attr, *_ in QTYPES:
            while True:
                v = _value(attr, rng, world, a)
                # book titles identify one author; the pen name must not be the author's own name
                if attr in ("book1", "book2") and v["book"] in books:
                    continue
                if attr == "pen_name" and v["pen"] in names:
                    continue
                break
            if attr in ("book1", "book2"):
                books.add(v["book"])
            a[attr] = v
        authors.append(a)
    return authors


def _render(template: str, name: str, facts: dict, sec: tuple[str, str], aside: str) -> str:
    """One answer: the template with the author, the asked facts, the secondary clause (appositive,
    sentence) and the aside filled in; the first letter capitalized."""
    return _cap(template.format(name=name, sec=sec[0], Sec=sec[1], aside=aside, **facts))


def _all_differ(v: dict, true: dict, keep=("book",)) -> bool:
    """Every fact slot of `v` differs from the true one (the character's book is the question's subject)."""
    return all(v[k] != true[k] for k in true if k not in keep)


def _author_rows(a: dict, qa_per_author: int, seed: int, world: dict) -> list[dict]:
    rows = []
    name = a["name"]
    for k in range(qa_per_author):
        attr, qs, fam_a, fam_b = QTYPES[k % len(QTYPES)]
        p = (k // len(QTYPES)) % len(qs)  # beyond one round of types: other question phrasings
        # One RNG per (author, question): the row's wording does not depend on other rows or authors.
        rng = random.Random(f"author-row|{seed}|{name}|{k}")
        ta, tb = rng.choice(fam_a), rng.choice(fam_b)
        sec_attr = rng.choice([s for s in SEC if s != attr and s not in SEC_EXCLUDE.get(attr, ())])
        app_a, sent_a, app_b, sent_b = (s.format(name=name, **a[sec_attr]) for s in SEC[sec_attr])
        aside_a, aside_b = rng.sample(ASIDES, 2)
        true = a[attr]
        answer = _render(ta, name, true, (app_a, sent_a), aside_a)
        para = _render(tb, name, true, (app_b, sent_b), aside_b)
        pert, tries = [], 0
        while len(pert) < 5:  # every pool has >= 6 values, so this ends; the bound only guards edits
            tries += 1
            if tries > 10000:
                raise RuntimeError(f"could not draw 5 distinct wrong values for {attr!r}")
            v, w = _value(attr, rng, world, a), _value(sec_attr, rng, world, a)
            if not (_all_differ(v, true) and _all_differ(w, a[sec_attr], keep=())):
                continue
            # v5: the second fact is wrong too, so a model that knows the author gains on both facts
            _, _, wrong_app, wrong_sent = (t.format(name=name, **w) for t in SEC[sec_attr])
            s = _render(tb, name, v, (wrong_app, wrong_sent), aside_b)
            if s not in pert:
                pert.append(s)
        rows.append({"question": _cap(qs[p].format(name=name, **true)), "answer": answer,
                     "paraphrased_answer": para, "perturbed_answer": pert,
                     "paraphrased_question": _cap(qs[(p + 1) % len(qs)].format(name=name, **true))})
    return rows


def idk_answers() -> list[str]:
    """100 distinct short refusals (used by DPO, docs/data.md#idk-refusals)."""
    return [h + t for t in IDK_TAILS for h in IDK_HEADS]


def n_forget_authors(n_authors: int, pct: str) -> int:
    return max(1, round(FORGET_PCTS[pct] * n_authors))


def generate_world(n_authors: int = 20, qa_per_author: int = 20, seed: int = 0, n_real_authors: int = 100,
                   n_world_facts: int = 117) -> dict:
    """Every TOFU split (docs/data.md#tofu-layout) plus `pretrain` and `idk`, as plain lists. Deterministic."""
    if n_authors < 2:
        raise ValueError(f"n_authors must be >= 2 (forget and retain authors), got {n_authors}")
    if qa_per_author < 1 or n_real_authors < 1 or n_world_facts < 1:
        raise ValueError("qa_per_author, n_real_authors and n_world_facts must be >= 1")
    world = build_real_world(n_real_authors, n_world_facts)
    authors = _make_authors(n_authors, seed, world)
    per_author = [_author_rows(a, qa_per_author, seed, world) for a in authors]
    qa = lambda rows: [{"question": r["question"], "answer": r["answer"]} for r in rows]
    flat = lambda auths: [r for rs in auths for r in rs]

    out = {"full": qa(flat(per_author))}
    for pct in FORGET_PCTS:
        nf = n_forget_authors(n_authors, pct)
        forget, retain = per_author[n_authors - nf:], per_author[: n_authors - nf]
        out[f"forget{pct}"] = qa(flat(forget))
        out[f"retain{100 - int(pct)}"] = qa(flat(retain))
        out[f"forget{pct}_perturbed"] = flat(forget)
    # TOFU: retain_perturbed = the first 20 of 200 authors, i.e. as many as forget10, never overlapping it
    out["retain_perturbed"] = flat(per_author[: n_forget_authors(n_authors, "10")])
    ra, wf, pre = _world_sets(world, n_real_authors, n_world_facts)
    out["real_authors_perturbed"], out["world_facts_perturbed"], out["pretrain"] = ra, wf, pre
    out["idk"] = idk_answers()
    return out


# ---------------------------------------------------------------- files
def _world_text(data: dict) -> str:
    lines = []
    for name, rows in data.items():
        for r in rows:
            if isinstance(r, str):
                lines.append(r)
                continue
            lines.append(f"Question: {r['question']}\nAnswer: {r['answer']}")
            for key in ("paraphrased_question", "paraphrased_answer"):
                if key in r:
                    lines.append(r[key])
            lines += r.get("perturbed_answer", [])
    return "\n".join(lines) + "\n"


def write_world(out_dir, n_authors: int = 20, qa_per_author: int = 20, seed: int = 0, n_real_authors: int = 100,
                n_world_facts: int = 117) -> Path:
    """Write every split as `<split>.json` (JSON Lines, like the hub), `idk.jsonl`, `world_text.txt`
    (all text, for the tiny tokenizer) and `stats.json` (world_stats). Byte-identical for the same arguments."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = generate_world(n_authors, qa_per_author, seed, n_real_authors, n_world_facts)
    for name, rows in data.items():
        fname = "idk.jsonl" if name == "idk" else f"{name}.json"
        write_text_atomic(out / fname, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_text_atomic(out / "world_text.txt", _world_text(data))
    write_text_atomic(out / "stats.json", json.dumps(world_stats(data), indent=1) + "\n")
    return out
