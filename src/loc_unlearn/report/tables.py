"""Tables and headline sentences of a study report, computed from results.json (no rendering here).

Means and stds are recomputed from the per-run values (the runs are the ground truth; a stale
`tests` entry cannot make the table disagree with them); p-values and intervals come from the study's
`tests` entries (docs/studies.md#step-4-comparison), and whatever an entry lacks (an older study: no t interval, MDD,
censoring counts) is recomputed from the runs with evaluate.stats. Numbers: 3 decimals, MU95 (a
log10 FQ) 2 decimals. One seed prints as a plain value ("n/a (1 seed)" for tests), never "± 0.000".
"""
from __future__ import annotations

from .common import (ALPHA, BOOT_HEADER, CI_HEADER, MDD_HEADER, MU95_MARK, POWER_LABEL, REGIONS, Table, by_seed,
                     fmt, fmt_interval, fmt_mdd, fmt_ms, fmt_p, fmt_wilcoxon, isnum, mean_std, methods_of, paired)

# ----------------------------------------------------------------------------- controlled study


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


def comparison_table(res: dict, metric: str) -> Table:
    """The paper's Table 2 layout for one metric: rows = methods, Oracle vs Random with paired tests,
    the t interval of the difference (the CI to read), the percentile bootstrap (docs/statistics.md#bootstrap-interval; see
    evaluate.stats for why it is not a 95% CI at n <= 5), the minimum detectable difference (docs/statistics.md#minimum-detectable-difference-mdd)
    and, for MU95, how many values are censored (MU never fell below 0.95 MU0, docs/statistics.md#censoring)."""
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
    name = {"aues": "AUES", "mu95": "MU95"}.get(metric) or next(
        (m["label"] for m in res.get("metrics") or [] if m["name"] == metric), metric)
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
                     "of the mean over resampled seeds (docs/statistics.md#bootstrap-interval); it only sees the observed differences (with 3 seeds "
                     "it is exactly their [min, max]), so at few seeds it is narrower than a 95% CI.")
    out.notes.append(f"MDD: a true Oracle-Random difference of this size or more would have been detected by the "
                     f"two-sided paired t-test at {ALPHA} with power {POWER_LABEL}, given n and the sd of the "
                     "per-seed differences (docs/statistics.md#minimum-detectable-difference-mdd). A non-significant p says little about differences smaller "
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
    """One sentence on the positive control (docs/studies.md#positive-control; studies/controls.py)."""
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
                          "tokens: 1 = no update helps, 0 = reproduced exactly (docs/studies.md#output-fit); n/a = nothing to reproduce in that "
                          "layer (no V_tgt columns or no change)."]))
    models = [(k, lab) for k, lab in (("theta_o", "theta_o (injected)"), ("theta_r", "theta_r (never saw forget set)"),
                                      ("stitched", "stitched theta_r + Delta_R")) if isinstance(of.get(k), dict)]
    if models:
        out.append(Table(["model", "FS", "RS"], [[lab, fmt(of[k].get("FS")), fmt(of[k].get("RS"))] for k, lab in models],
                         ["FS = 1 - mean forget ES (low = knows the forget set); RS = mean retain ES."]))
    return out


def runs_table(res: dict) -> Table:
    key = "region" if res["study"] == "controlled" else "localizer"
    extra = res.get("metrics") or []
    rows = []
    for r in res["runs"]:
        mark = f" {MU95_MARK}" if r.get("mu95_not_reached") else ""
        rows.append([r["method"], str(r[key]), str(r.get("seed", "")), fmt(r["aues"]), fmt(r["mu95"], 2) + mark,
                     *[fmt(r.get(m["name"])) for m in extra], str(len(r.get("trajectory") or []))])
    return Table(["method", key, "seed", "AUES", "MU95", *[m["label"] for m in extra], "points"], rows)


def metric_note(m: dict) -> str:
    """What an extra metric (eval.metrics) is: its declaration as the study recorded it."""
    direction = "higher is better" if m.get("higher_is_better", True) else "lower is better"
    return (f"{m['label']} (`{m['name']}`, {direction}): {m.get('doc') or 'a registered metric'}. Value at each run's "
            "last fully evaluated checkpoint.")


def localization_metric_table(res: dict, m: dict) -> Table:
    """An extra metric per localizer x unlearning method: mean ± std over the runs of that cell."""
    runs = res["runs"]
    methods = methods_of(runs)
    def cell(loc, meth):
        return [r[m["name"]] for r in runs if r["localizer"] == loc and r["method"] == meth and isnum(r.get(m["name"]))]

    rows = [[loc] + [fmt_ms(cell(loc, meth)) for meth in methods] for loc in localizers_of(runs)]
    return Table(["localizer"] + [f"{meth} {m['label']}" for meth in methods], rows)


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
    head = (f"Localization benchmark (docs/studies.md#localization-benchmark): masked unlearning with each localizer's {fmt(res.get('ratio'), 2)} "
            f"mask; higher AUES is better.")
    if "random" in localizers_of(runs):
        head += f" A localizer beats the random mask for {beat} of {len(lines)} unlearning method(s)."
    return [head] + lines
