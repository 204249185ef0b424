"""Tables and headline sentences of a study report, computed from results.json (no rendering here).

Means and stds are recomputed from the per-run values (the runs are the ground truth; a stale
`tests` entry cannot make the table disagree with them); p-values and CIs come from the study's
`tests` entries (SPEC §7 step 4), or are recomputed with evaluate.stats when a study did not save them.
Numbers: 3 decimals, MU95 (a log10 FQ) 2 decimals.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..config import REGIONS  # the controlled study's two masks (plots imports it from here)

ALPHA = 0.05  # significance level of the headline
MU95_MARK = "†"  # MU never fell below 0.95 MU(theta_0): the last point's value stands in (SPEC §4)


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


def isnum(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt(x, nd: int = 3) -> str:
    return f"{x:.{nd}f}" if isnum(x) else "n/a"


def fmt_p(p) -> str:
    if not isnum(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1, like the study's tests entries); std 0 for one value."""
    a = np.asarray([x for x in xs if isnum(x)], dtype=float)
    if len(a) == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def fmt_ms(xs: list[float], nd: int = 3) -> str:
    m, s = mean_std(xs)
    return f"{fmt(m, nd)} ± {fmt(s, nd)}" if len(xs) > 1 else fmt(m, nd)


def methods_of(runs: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in runs))  # first-seen order = the study's order


# ----------------------------------------------------------------------------- controlled study


def by_seed(runs: list[dict], method: str, region: str, key: str) -> dict[int, float]:
    return {r["seed"]: r[key] for r in runs if r["method"] == method and r["region"] == region}


def paired(res: dict, method: str, metric: str) -> dict:
    """The study's test entry for (method, metric), or a fresh one over the seeds both regions have."""
    for t in res.get("tests") or []:
        if t.get("method") == method and t.get("metric") == metric:
            return t
    from ..evaluate.stats import paired_tests

    o, r = by_seed(res["runs"], method, "oracle", metric), by_seed(res["runs"], method, "random", metric)
    seeds = sorted(s for s in set(o) & set(r) if isnum(o[s]) and isnum(r[s]))
    if not seeds:
        return {}
    t = paired_tests([o[s] for s in seeds], [r[s] for s in seeds])
    return {**t, "p_wilcoxon": t["wilcoxon_p"]}


def controlled_headline(res: dict) -> list[str]:
    """One line per method: Oracle vs Random AUES, p (paired t), significant at ALPHA or not."""
    lines, n_sig, n_tested = [], 0, 0
    for m in methods_of(res["runs"]):
        o = list(by_seed(res["runs"], m, "oracle", "aues").values())
        r = list(by_seed(res["runs"], m, "random", "aues").values())
        t = paired(res, m, "aues")
        p = t.get("p_t")
        if isnum(p):
            n_tested += 1
            n_sig += p < ALPHA
            verdict = (f"**significant** at {ALPHA}" if p < ALPHA else f"not significant at {ALPHA}")
        else:
            verdict = "not testable (too few seeds or identical values)"
        better = "Oracle" if mean_std(o)[0] > mean_std(r)[0] else "Random"
        lines.append(f"**{m}**: AUES Oracle {fmt(mean_std(o)[0])} vs Random {fmt(mean_std(r)[0])} "
                     f"(diff {fmt(t.get('mean_diff'))}, {better} higher), paired t p = {fmt_p(p)}: {verdict}.")
    n_seeds = len({r["seed"] for r in res["runs"]})
    summary = (f"Oracle (the injected region V_tgt) vs Random (a disjoint region of the same size), {n_seeds} "
               f"seed(s): " + (f"the difference in AUES is significant for {n_sig} of {n_tested} tested method(s)."
                              if n_tested else "no method could be tested (a paired t-test needs 2+ seeds that differ)."))
    if n_tested and n_sig == 0:
        summary += " Knowing where the knowledge was put did not make unlearning it measurably better."
    short = [str(r.get("seed")) for r in res.get("injection") or [] if not r.get("reached")]
    if short:
        lines.append(f"Caution: injection did not reach its target ES for seed(s) {', '.join(short)} (see the injection table).")
    return [summary] + lines


def comparison_table(res: dict, metric: str) -> Table:
    """The paper's Table 2 layout for one metric: rows = methods, Oracle vs Random with paired tests."""
    nd = 2 if metric == "mu95" else 3
    rows, notes = [], []
    for m in methods_of(res["runs"]):
        cells = [m]
        for reg in REGIONS:
            vals = by_seed(res["runs"], m, reg, metric)
            cell = fmt_ms(list(vals.values()), nd)
            if metric == "mu95":
                flagged = by_seed(res["runs"], m, reg, "mu95_not_reached")
                k = sum(bool(v) for v in flagged.values())
                if k:
                    cell += f" {MU95_MARK}"
                    notes.append(f"{m} {reg}: {k}/{len(flagged)} seed(s)")
            cells.append(cell)
        t = paired(res, m, metric)
        ci = f"[{fmt(t.get('ci_low'), nd)}, {fmt(t.get('ci_high'), nd)}]" if t else "n/a"
        cells += [fmt(t.get("mean_diff"), nd), fmt_p(t.get("p_t")), fmt_p(t.get("p_wilcoxon")), ci,
                  str(t.get("n", len(by_seed(res["runs"], m, "oracle", metric))))]
        rows.append(cells)
    name = "AUES" if metric == "aues" else "MU95"
    headers = ["method", f"{name} Oracle", f"{name} Random", "diff (O-R)", "p (paired t)", "p (Wilcoxon)",
               "95% CI of diff", "seeds"]
    out = Table(headers, rows)
    if notes:
        out.notes.append(f"{MU95_MARK} MU never fell below 0.95 MU(theta_0) (the last point's log10 FQ is used) in: "
                         + "; ".join(notes) + ".")
    seen = []
    for m in methods_of(res["runs"]):
        for n in paired(res, m, metric).get("notes") or []:
            if n not in seen:
                seen.append(n)
    out.notes += seen
    return out


def injection_table(res: dict) -> Table:
    rows = [[str(r.get("seed", "")), fmt(r.get("forget_es")), fmt(r.get("target_es")), fmt(r.get("full_ft_es")),
             "yes" if r.get("reached") else "**no**"] for r in res["injection"]]
    t = Table(["seed", "forget ES reached", "target ES", "full fine-tune ES", "reached?"], rows)
    if any(not r.get("reached") for r in res["injection"]):
        t.notes.append("Injection fell short of the target for some seeds: theta_o knows less of the forget set there.")
    return t


def localization_check_table(res: dict) -> Table:
    """Precision/recall of each localization method at recovering V_tgt, mean over the seeds present."""
    rows = []
    for m in list(dict.fromkeys(r["method"] for r in res["localization_check"])):
        sel = [r for r in res["localization_check"] if r["method"] == m]
        rows.append([m, fmt_ms([r["precision"] for r in sel]), fmt_ms([r["recall"] for r in sel]), str(len(sel))])
    ratio = res.get("ratio")
    notes = [f"A random mask of the same size has expected precision = recall = ratio = {fmt(ratio)}."] if isnum(ratio) else []
    return Table(["localization method", "precision", "recall", "seeds"], rows, notes)


def output_fit_tables(res: dict) -> list[Table]:
    of = res["output_fit"]
    out = []
    if of.get("per_layer"):
        out.append(Table(["layer", "relative residual", "tokens"],
                         [[str(r["layer"]), fmt(r["residual"]), str(r.get("n_tokens", ""))] for r in of["per_layer"]],
                         ["Relative residual of fitting a random region to theta_o's MLP output change on forget "
                          "tokens: 1 = no update helps, 0 = reproduced exactly (SPEC §9); n/a = nothing to reproduce in that "
                          "layer (no V_tgt columns or no change)."]))
    models = [(k, lab) for k, lab in (("theta_o", "theta_o (injected)"), ("theta_r", "theta_r (never saw forget set)"),
                                      ("stitched", "stitched theta_r + Delta_R")) if isinstance(of.get(k), dict)]
    if models:
        out.append(Table(["model", "FS", "RS"], [[lab, fmt(of[k].get("FS")), fmt(of[k].get("RS"))] for k, lab in models],
                         ["FS = 1 - mean forget ES (low = knows the forget set); RS = mean retain ES."]))
    return out


def runs_table(res: dict) -> Table:
    key = "region" if res["study"] == "controlled" else "localizer"
    rows = []
    for r in res["runs"]:
        mark = f" {MU95_MARK}" if r.get("mu95_not_reached") else ""
        rows.append([r["method"], str(r[key]), str(r.get("seed", "")), fmt(r["aues"]), fmt(r["mu95"], 2) + mark,
                     str(len(r.get("trajectory") or []))])
    return Table(["method", key, "seed", "AUES", "MU95", "points"], rows)


# ----------------------------------------------------------------------------- localization benchmark


def localizers_of(runs: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["localizer"] for r in runs))


def cell_values(runs: list[dict], loc: str, method: str, key: str) -> list:
    return [r[key] for r in runs if r["localizer"] == loc and r["method"] == method]


def localization_table(res: dict) -> Table:
    """The paper's Table 1: rows = localizers, AUES and MU95 per unlearning method (best AUES in bold)."""
    runs, methods = res["runs"], methods_of(res["runs"])
    best = {}
    for m in methods:
        means = {loc: mean_std(cell_values(runs, loc, m, "aues"))[0] for loc in localizers_of(runs)}
        means = {k: v for k, v in means.items() if isnum(v)}
        best[m] = max(means, key=means.get) if means else None
    rows, flagged = [], False
    for loc in localizers_of(runs):
        cells = [loc]
        for m in methods:
            a = fmt_ms(cell_values(runs, loc, m, "aues"))
            cells.append(f"**{a}**" if best[m] == loc else a)
            mu = fmt_ms(cell_values(runs, loc, m, "mu95"), 2)
            if any(cell_values(runs, loc, m, "mu95_not_reached")):
                mu += f" {MU95_MARK}"
                flagged = True
            cells.append(mu)
        rows.append(cells)
    headers = ["localizer"] + [h for m in methods for h in (f"{m} AUES", f"{m} MU95")]
    notes = ["Bold: best AUES per unlearning method."]
    if flagged:
        notes.append(f"{MU95_MARK} MU never fell below 0.95 MU(theta_0); the last point's log10 FQ is used.")
    return Table(headers, rows, notes)


def localization_headline(res: dict) -> list[str]:
    runs = res["runs"]
    lines, beat = [], 0
    for m in methods_of(runs):
        means = {loc: mean_std(cell_values(runs, loc, m, "aues"))[0] for loc in localizers_of(runs)}
        means = {k: v for k, v in means.items() if isnum(v)}
        if not means:
            continue
        best = max(means, key=means.get)
        if "random" in means:
            others = {k: v for k, v in means.items() if k != "random"}
            if others:
                b = max(others, key=others.get)
                beat += others[b] > means["random"]
                lines.append(f"**{m}**: random mask AUES {fmt(means['random'])}; best localizer **{b}** "
                             f"{fmt(others[b])} (diff {fmt(others[b] - means['random'])} vs random).")
            else:
                lines.append(f"**{m}**: random mask AUES {fmt(means['random'])}.")
        else:
            lines.append(f"**{m}**: best localizer **{best}** AUES {fmt(means[best])} (no random baseline in this study).")
    head = (f"Localization benchmark (SPEC §8): masked unlearning with each localizer's {fmt(res.get('ratio'), 2)} "
            f"mask; higher AUES is better.")
    if "random" in localizers_of(runs):
        head += f" A localizer beats the random mask for {beat} of {len(lines)} unlearning method(s)."
    return [head] + lines
