"""TOFU-style evaluation of one model (docs/metrics.md): FS, RS, Prob, ROUGE-L, truth ratio, FQ, MU.

`evaluate_model` returns a JSON-serializable dict:
  FS, RS, MU, MU_sets, MU_terms, MU_note, FQ, log10_FQ, es_floor, and one dict per eval set
  (forget / retain / real_authors / world_facts, or general_people / general_world in place of the last two:
  docs/data.md#evaluation-sets) with aggregates (n, es, em, prob, rouge_l,
  truth_ratio) and per-example lists (es_per, em_per, nll, prob_per, rouge_l_per, generations,
  truth_ratio_raw = R per example, the values Forget Quality compares), and `metrics`: {name: value} of the
  registered metrics named in eval.metrics (loc_unlearn.plugins.register_metric; {} when none).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

from ..data.source import UTILITY_SETS
from ..errors import DataError, UserError
from .generation import generate, rouge_l_recall
from .token_metrics import token_metrics

SET_NAMES = ("forget", "retain", *UTILITY_SETS["world"], *UTILITY_SETS["general"])
MU_SETS = ("retain", *UTILITY_SETS["world"])
"""TOFU's Model Utility sets; with the project's general-knowledge sets, `GENERAL_MU_SETS` (`mu_sets`)."""
GENERAL_MU_SETS = ("retain", *UTILITY_SETS["general"])
FQ_FLOOR = 1e-300


def _mean(x):
    return float(np.mean(x)) if len(x) else float("nan")


def truth_ratios(nll_base: list[float], nll_pert: list[list[float]]) -> list[float]:
    """R = P_pert / P_base per example, P_pert = exp(-mean_pert NLL_avg) (docs/metrics.md#truth-ratio)."""
    return [math.exp(b - float(np.mean(p))) for b, p in zip(nll_base, nll_pert)]


def eval_set(model, tokenizer, name: str, rows: list[dict], ecfg, answer_only: bool = False) -> dict:
    """Every per-set number of docs/metrics.md for one eval set; `answer_only`: the answer pass alone (ES, EM,
    NLL: no paraphrased/perturbed passes, truth ratios or ROUGE)."""
    try:
        tm = token_metrics(model, tokenizer, rows, batch_size=ecfg.batch_size, es_floor=ecfg.es_floor,
                           answer_only=answer_only)
    except DataError as e:
        raise DataError(f"eval set {name!r}: {e}") from None
    p = [math.exp(-v) for v in tm["nll"]]
    out = {"n": len(rows), "es": _mean(tm["es"]), "em": _mean(tm["em"]),
           "es_per": tm["es"], "em_per": tm["em"], "nll": tm["nll"], "prob_per": p,
           "truncated": tm["truncated"], "max_length": tm["max_length"]}
    if answer_only:
        return out
    is_qa_set = name in ("forget", "retain")
    pert = tm.get("nll_perturbed")
    if is_qa_set or pert is None:
        out["prob"] = _mean(p)
    else:
        # Real authors / world facts: probability normalized against the wrong options.
        out["prob_per"] = [pa / (pa + sum(math.exp(-v) for v in pv)) for pa, pv in zip(p, pert)]
        out["prob"] = _mean(out["prob_per"])
    base = tm.get("nll_paraphrased") if is_qa_set else tm["nll"]
    if pert is not None and base is not None:
        r = truth_ratios(base, pert)
        out["truth_ratio_raw"] = r
        per = [min(x, 1.0 / x) for x in r] if name == "forget" else [max(0.0, 1.0 - x) for x in r]
        out["truth_ratio"] = _mean(per)
    else:
        out["truth_ratio_raw"], out["truth_ratio"] = None, None
    if ecfg.rouge:
        gens = generate(model, tokenizer, [r["question"] for r in rows], ecfg.max_new_tokens, ecfg.batch_size)
        out["generations"] = gens
        out["rouge_l_per"] = rouge_l_recall(gens, [r["answer"] for r in rows])
        out["rouge_l"] = _mean(out["rouge_l_per"])
    else:
        out["rouge_l"] = None
    return out


def forget_quality(truth_ratios_model, truth_ratios_ref) -> tuple[float, float]:
    """(FQ, log10 FQ): two-sided KS p-value between forget-set truth ratios (docs/metrics.md#forget-quality-fq), floored at 1e-300."""
    p = float(stats.ks_2samp(np.asarray(truth_ratios_model, float), np.asarray(truth_ratios_ref, float)).pvalue)
    p = max(p, FQ_FLOOR)
    return p, math.log10(p)


def mu_sets(sets) -> tuple[str, ...]:
    """The sets Model Utility is computed on: retain and the two knowledge sets, the general-knowledge ones
    when `sets` holds one of them (data.utility_sets=general), else TOFU's real authors and world facts."""
    return GENERAL_MU_SETS if any(s in sets for s in GENERAL_MU_SETS[1:]) else MU_SETS


def model_utility(sets: dict) -> tuple[float, list[str], dict, str]:
    """Harmonic mean of {Prob, ROUGE-L, Truth ratio} x {retain, real authors, world facts} (docs/metrics.md#model-utility-mu),
    or x {retain, general_people, general_world} with the general-knowledge sets (`mu_sets`).

    Uses the sets (and numbers) that exist; the note says what was left out.
    """
    terms, missing = {}, []
    expected = mu_sets(sets)
    for s in expected:
        if s not in sets:
            missing.append(s)
            continue
        for k in ("prob", "rouge_l", "truth_ratio"):
            v = sets[s].get(k)
            if v is None:
                missing.append(f"{s}/{k}")
            else:
                terms[f"{s}/{k}"] = float(v)
    used = [s for s in expected if s in sets]
    if not terms:
        return float("nan"), used, terms, "no Model Utility sets"
    vals = np.array(list(terms.values()))
    # hmean is 0 if any term is 0 (scipy requires non-negative values; tiny negatives cannot occur).
    mu = 0.0 if np.any(vals <= 0) else float(stats.hmean(vals))
    note = f"harmonic mean of {len(terms)} numbers" + (f"; missing: {', '.join(missing)}" if missing else "")
    unused = [s for s in MU_SETS if s in sets and s not in expected]
    if unused:  # both kinds given: the general-knowledge sets stand in for TOFU's, said so
        note += f"; not in MU (general-knowledge sets used instead): {', '.join(unused)}"
    return mu, used, terms, note


def _canonical(name: str) -> str:
    """Accept split names as well as set names: forget10_perturbed -> forget, retain_perturbed -> retain."""
    n = name.removesuffix("_perturbed")
    if n.startswith("forget"):
        return "forget"
    if n in SET_NAMES:
        return n
    raise UserError(f"unknown eval set {name!r}; known: {', '.join(SET_NAMES)} (or their *_perturbed split names)")


def evaluate_model(model, tokenizer, eval_sets: dict, ecfg, reference_truth_ratios=None, es_only: bool = False) -> dict:
    """All metrics of one model (docs/metrics.md). `reference_truth_ratios`: the reference (retain) model's
    forget-set `truth_ratio_raw` list, or its whole metrics dict; None -> FQ is None. `es_only`: FS and
    RS alone, one answer pass on the forget and retain sets (MU, FQ None; `es_only` True): the points
    between a trajectory's end points under eval.full_at=ends. `metrics`: each registered metric named in
    `ecfg.metrics`, `fn(model, tokenizer, eval_sets by set name, ecfg)` as a float; skipped (`{}`) when
    `es_only`, like the other full-evaluation numbers."""
    sets = {}
    for name, rows in eval_sets.items():
        key = _canonical(name)
        if key in sets:
            raise UserError(f"eval sets {name!r} and another both map to {key!r}")
        if es_only and key not in ("forget", "retain"):
            continue
        sets[key] = eval_set(model, tokenizer, key, rows, ecfg, answer_only=es_only)
    for need in ("forget", "retain"):
        if need not in sets:
            raise UserError(f"evaluate_model needs a {need!r} eval set; got {sorted(eval_sets)}")
    out = {"FS": 1.0 - sets["forget"]["es"], "RS": sets["retain"]["es"], "es_floor": ecfg.es_floor,
           # rows cut to the model's context (answers longer than max_position_embeddings), per set
           "truncated": {k: v["truncated"] for k, v in sets.items()}}
    if es_only:
        return out | {"MU": None, "FQ": None, "log10_FQ": None, "es_only": True, "metrics": {}} | sets
    out["MU"], out["MU_sets"], out["MU_terms"], out["MU_note"] = model_utility(sets)
    out["FQ"], out["log10_FQ"] = None, None
    ref = reference_truth_ratios
    if isinstance(ref, dict):
        ref = ref["forget"]["truth_ratio_raw"]
    if ref is not None:
        mine = sets["forget"]["truth_ratio_raw"]
        if mine is None:
            raise UserError("Forget Quality needs paraphrased and perturbed answers in the forget eval set")
        out["FQ"], out["log10_FQ"] = forget_quality(mine, ref)
    out["metrics"] = extra_metrics(model, tokenizer, {_canonical(n): rows for n, rows in eval_sets.items()}, ecfg)
    out.update(sets)
    return out


def extra_metrics(model, tokenizer, eval_sets: dict, ecfg) -> dict:
    """{name: float} of the registered metrics named in ecfg.metrics (none without that field); `eval_sets` by
    set name (forget, retain, and real_authors, world_facts or general_people, general_world)."""
    from ..registry import METRICS

    out = {}
    for name in getattr(ecfg, "metrics", None) or ():
        v = METRICS.get(name).fn(model, tokenizer, eval_sets, ecfg)
        try:
            out[name] = float(v)
        except (TypeError, ValueError):
            raise UserError(f"metric {name!r} returned {v!r}; a metric returns one number per model") from None
    return out


def format_table(metrics: dict) -> str:
    """Readable console table: one line per eval set, then the summary numbers."""
    def f(v, w=8):
        return f"{'-':>{w}}" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:>{w}.4f}"

    lines = [f"{'set':<14}{'n':>6}{'ES':>8}{'EM':>8}{'Prob':>8}{'ROUGE-L':>9}{'TruthR':>8}"]
    for s in SET_NAMES:
        if s in metrics:
            m = metrics[s]
            lines.append(f"{s:<14}{m['n']:>6}{f(m['es'])}{f(m['em'])}{f(m['prob'])}{f(m['rouge_l'], 9)}"
                         f"{f(m['truth_ratio'])}")
    lines.append(f"FS {f(metrics['FS'], 0)}  RS {f(metrics['RS'], 0)}  MU {f(metrics['MU'], 0)}  "
                 f"log10 FQ {f(metrics.get('log10_FQ'), 0)}")
    lines.append(f"MU on {', '.join(metrics.get('MU_sets') or []) or 'no sets'}: {metrics.get('MU_note', '')}")
    return "\n".join(lines)
