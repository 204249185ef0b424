"""Stats of a generated synthetic world (written as stats.json next to its splits): how much of an
answer is template and how much is fact, answer lengths, paraphrase/perturbed overlap, and whether the
utility eval rows are held-out wordings of pretraining facts (issue 11's faithfulness checks)."""
from __future__ import annotations

import re
import statistics
from collections import Counter

from .synthetic_text import QTYPES

_WORD = re.compile(r"[a-z0-9']+")


def _words(s: str) -> list[str]:
    return _WORD.findall(s.lower())


def _jaccard(a: str, b: str) -> float:
    x, y = set(_words(a)), set(_words(b))
    return len(x & y) / len(x | y) if x | y else 1.0


def _rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 of two texts over lowercased words (longest common subsequence)."""
    x, y = _words(a), _words(b)
    if not x or not y:
        return float(x == y)
    prev = [0] * (len(y) + 1)
    for u in x:
        cur = [0]
        for j, v in enumerate(y):
            cur.append(prev[j] + 1 if u == v else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    return 0.0 if lcs == 0 else 2 * lcs / (len(x) + len(y))


def _summary(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "min": round(min(xs), 4), "median": round(float(statistics.median(xs)), 4),
            "max": round(max(xs), 4), "mean": round(statistics.fmean(xs), 4)}


def _question_type(question: str, patterns: list) -> str:
    return next((attr for attr, rx in patterns if rx.fullmatch(question)), "other")


def world_stats(world: dict) -> dict:
    """Numbers that say how much of the world is template and how much is fact (written as stats.json):
    - answer_words: answer length in words (min/median/max/mean) per split kind;
    - overlap: mean Jaccard (word sets) and ROUGE-L F1 of paraphrased vs answer and of perturbed vs
      paraphrased, over forget10_perturbed + retain_perturbed (high perturbed-vs-paraphrase and low
      paraphrase-vs-answer overlap = the truth ratio compares facts in a wording the model never trained on);
    - template: per author answer, the fraction of its words that occur in more than half of the answers
      of its question type (`word_frac`), and the fraction of its trailing words that do (`suffix_frac`,
      what a model that knows only the templates can complete, cf. Extraction Strength);
    - eval_vs_pretrain: real-authors / world-facts eval rows whose (question, answer) or question occurs
      verbatim in `pretrain`, and whose answer value occurs in no pretrain answer."""
    pert_rows = world.get("forget10_perturbed", []) + world.get("retain_perturbed", [])
    kinds = {"author_answer": [r["answer"] for r in world.get("full", [])],
             "paraphrased_answer": [r["paraphrased_answer"] for r in pert_rows],
             "perturbed_answer": [p for r in pert_rows for p in r["perturbed_answer"]],
             "real_authors_answer": [r["answer"] for r in world.get("real_authors_perturbed", [])],
             "world_facts_answer": [r["answer"] for r in world.get("world_facts_perturbed", [])],
             "pretrain_answer": [r["answer"] for r in world.get("pretrain", [])]}
    out = {"answer_words": {k: _summary([len(_words(s)) for s in v]) for k, v in kinds.items()}}
    pairs = {"paraphrased_vs_answer": [(r["paraphrased_answer"], r["answer"]) for r in pert_rows],
             "perturbed_vs_paraphrased": [(p, r["paraphrased_answer"]) for r in pert_rows for p in r["perturbed_answer"]]}
    mean = lambda xs: round(statistics.fmean(xs), 4) if xs else None
    out["overlap"] = {k: {"jaccard": mean([_jaccard(a, b) for a, b in v]),
                          "rouge_l_f1": mean([_rouge_l(a, b) for a, b in v])} for k, v in pairs.items()}
    patterns = [(attr, re.compile(".+".join(re.escape(part) for part in re.split(r"\{\w+\}", q))))
                for attr, qs, *_ in QTYPES for q in qs]
    by_type: dict[str, list[list[str]]] = {}
    for r in world.get("full", []):
        by_type.setdefault(_question_type(r["question"], patterns), []).append(_words(r["answer"]))
    word_frac, suffix_frac = [], []
    for answers in by_type.values():
        df = Counter(w for ws in answers for w in set(ws))
        common = {w for w, c in df.items() if c > len(answers) / 2}
        for ws in answers:
            if not ws:
                continue
            word_frac.append(sum(w in common for w in ws) / len(ws))
            tail = len(ws) - next((i + 1 for i in range(len(ws) - 1, -1, -1) if ws[i] not in common), 0)
            suffix_frac.append(tail / len(ws))
    out["template"] = {"question_types": len(by_type), "word_frac": _summary(word_frac),
                       "suffix_frac": _summary(suffix_frac)}
    pre_pairs = {(r["question"], r["answer"]) for r in world.get("pretrain", [])}
    pre_qs = {r["question"] for r in world.get("pretrain", [])}
    pre_text = " ".join(r["answer"] for r in world.get("pretrain", []))
    ev = world.get("real_authors_perturbed", []) + world.get("world_facts_perturbed", [])
    out["eval_vs_pretrain"] = {"rows": len(ev),
                               "pair_verbatim": sum((r["question"], r["answer"]) in pre_pairs for r in ev),
                               "question_verbatim": sum(r["question"] in pre_qs for r in ev),
                               "answer_value_missing": sum(r["answer"].lower() not in pre_text.lower() for r in ev)}
    return out
