"""Tables and headline sentences of a study report, computed from results.json (no rendering here).

Means and stds are recomputed from the per-run values (the runs are the ground truth; a stale
`tests` entry cannot make the table disagree with them); p-values and intervals come from the study's
`tests` entries (docs/studies.md#step-4-comparison), and whatever an entry lacks (an older study: no t interval, MDD,
censoring counts) is recomputed from the runs with evaluate.stats. Numbers: 3 decimals, MU95 (a
log10 FQ) 2 decimals. One seed prints as a plain value ("n/a (1 seed)" for tests), never "± 0.000".
"""
from __future__ import annotations

from .common import (ALPHA, BOOT_HEADER, CI_HEADER, MDD_HEADER, MU95_MARK, POWER_LABEL, REGIONS, UNCORRECTED, Table,
                     by_seed, fmt, fmt_interval, fmt_mdd, fmt_ms, fmt_p, fmt_wilcoxon, holm_m, isnum, mean_std,
                     methods_of, only_uncorrected, paired)

# The paper's MU95 values on TOFU forget10 (docs/metrics.md#paper-reference-values, Table 1), for scale.
PAPER_MU95 = "-14.87 to -16.84"

# ----------------------------------------------------------------------------- controlled study


def controlled_headline(res: dict) -> list[str]:
    """One line per method: Oracle vs Random AUES, p (paired t) and, where the study recorded it, p after
    Holm's correction over its tests (docs/statistics.md#multiple-comparisons); significant at ALPHA only
    after Holm, and a p below ALPHA only before it called what it is. Then the limits of the run."""
    lines, n_sig, n_unc, n_tested = [], 0, 0, 0
    m_holm = holm_m(res)
    for m in methods_of(res["runs"]):
        o = list(by_seed(res["runs"], m, "oracle", "aues").values())
        r = list(by_seed(res["runs"], m, "random", "aues").values())
        t = paired(res, m, "aues")
        p, n, ph = t.get("p_t"), t.get("n"), t.get("p_holm")
        if isnum(p):
            n_tested += 1
            if isnum(ph):
                n_sig += ph < ALPHA
                n_unc += only_uncorrected(t)
                verdict = (f"**significant** at {ALPHA} after Holm" if ph < ALPHA else UNCORRECTED if p < ALPHA
                           else f"not significant at {ALPHA}")
            else:  # an older results.json: no correction recorded, so say the p is uncorrected
                n_sig += p < ALPHA
                verdict = (f"**significant** at {ALPHA} uncorrected (no Holm p recorded)" if p < ALPHA
                           else f"not significant at {ALPHA}")
        elif isinstance(n, int) and n < 2:
            verdict = f"not testable ({n} seed)"
        else:
            verdict = "not testable (identical values)"
        better = "Oracle" if mean_std(o)[0] > mean_std(r)[0] else "Random"
        holm_part = f", Holm p = {fmt_p(ph, n)} ({t.get('holm_m')} tests)" if isnum(ph) else ""
        line = (f"**{m}**: AUES Oracle {fmt(mean_std(o)[0])} vs Random {fmt(mean_std(r)[0])} "
                f"(diff {fmt(t.get('mean_diff'))}, {better} higher), paired t p = {fmt_p(p, n)}{holm_part}: {verdict}")
        if isnum(t.get("mdd")) and isinstance(n, int) and n >= 2 and t.get("sd_diff") != 0:
            line += (f"; a difference of {fmt(t['mdd'])} or more would have been detected "
                     f"(n={n}, sd {fmt(t.get('sd_diff'))}, power {POWER_LABEL})")
        lines.append(line + ".")
    n_seeds = len({r["seed"] for r in res["runs"]})
    if not n_tested:
        verdict = "no method could be tested (a paired t-test needs 2+ seeds that differ)."
    elif m_holm is not None:
        verdict = (f"the difference in AUES is significant after Holm's correction over the study's {m_holm} tests for "
                   f"{n_sig} of {n_tested} tested method(s)"
                   + (f"; {n_unc} more at {UNCORRECTED}." if n_unc else "."))
    else:
        verdict = f"the difference in AUES is significant (uncorrected p < {ALPHA}) for {n_sig} of {n_tested} tested method(s)."
    summary = (f"Oracle (the injected region V_tgt) vs Random (a disjoint region of the same size), {n_seeds} "
               f"seed(s): " + verdict)
    if n_tested and n_sig == 0:
        summary += " Knowing where the knowledge was put did not make unlearning it measurably better."
    short = [str(r.get("seed")) for r in res.get("injection") or [] if not r.get("reached")]
    if short:
        lines.append(f"Caution: injection did not reach its target ES for seed(s) {', '.join(short)} (see the injection table).")
    if isinstance(res.get("positive_control"), dict):
        lines.append(positive_control_line(res["positive_control"]))
    return [summary] + lines + limits_lines(res)


def _metrics_of(res: dict) -> list[tuple[str, str]]:
    """(name, label) of the headline's tested metrics: AUES, MU95 and the extra metrics."""
    return [("aues", "AUES"), ("mu95", "MU95")] + [(m["name"], m["label"]) for m in res.get("metrics") or []]


def limits_lines(res: dict, per_test: bool = True) -> list[str]:
    """"Limits of this run" (docs/studies.md#limits-of-a-run): what a result of this run can and cannot say,
    so a null on a small testbed is not read as the paper's finding. The FQ ceiling at this forget size, the
    injection reached vs its target, the tests' p before and after Holm with their MDD (`per_test`: one line
    per metric; the terminal has them in its table), and the positive control."""
    out = ["**Limits of this run** (docs/studies.md#limits-of-a-run):"]
    fq = res.get("fq_ceiling")
    if isinstance(fq, dict) and isnum(fq.get("log10_fq_min")):
        line = (f"FQ ceiling: with {fq.get('n_forget')} forget rows per side, the KS test behind FQ cannot give a "
                f"log10 FQ below {fmt(fq['log10_fq_min'], 2)} (truth ratios fully separated, D = 1; "
                "docs/metrics.md#fq-ceiling), and values near it cannot tell models apart; the paper's MU95 values "
                f"({PAPER_MU95}) come from TOFU forget10's 400 rows (docs/metrics.md#paper-reference-values).")
    else:
        line = "FQ ceiling: not recorded in this results.json (docs/metrics.md#fq-ceiling)."
    start = theta_o_values(res, "log10_FQ")
    if start:  # every run's first point is theta_o: where log10 FQ starts before any unlearning
        line += f" theta_o starts at log10 FQ {fmt(mean_std(start)[0], 2)} (mean over {len(start)} seed(s))."
    out.append(line)
    practical = fq.get("practical") if isinstance(fq, dict) else None
    if isinstance(practical, dict) and isnum(practical.get("log10_fq")):
        need = practical.get("rows_for_minus_8")
        out.append(f"Practical FQ ceiling (docs/metrics.md#practical-fq-ceiling): theta_r's truth ratios on unseen "
                   f"(forget) vs trained-on (retain) authors differ by KS D {fmt(practical.get('ks_d'), 2)}, log10 FQ "
                   f"{fmt(practical['log10_fq'], 2)}: about the lowest a perfectly injected theta_o could reach here"
                   + (f"; log10 FQ <= -8 at this D needs about {need} rows per side." if need else "."))
    out.append(faithfulness_line(res))
    inj = res.get("injection") or []
    if inj:
        reached = sum(bool(r.get("reached")) for r in inj)
        targets = sorted({fmt(r.get("target_es")) for r in inj})
        line = (f"Injection: {reached} of {len(inj)} seed(s) reached the target forget ES (forget ES "
                + " / ".join(fmt(r.get("forget_es")) for r in inj) + f" vs target {' / '.join(targets)})")
        out.append(line + ("; theta_o holds less of the forget set than designed, so there is less to unlearn."
                           if reached < len(inj) else "."))
    else:
        out.append("Injection: not recorded in this results.json.")
    m_holm = holm_m(res)
    tests = [(m, name, label, paired(res, m, name)) for name, label in _metrics_of(res) for m in methods_of(res["runs"])]
    if m_holm == 0:
        out.append("Tests: no Oracle-vs-Random test had a p (a paired t-test needs 2+ seeds that differ).")
    elif m_holm is not None:
        unc = [f"{m} {label}" for m, _, label, t in tests if only_uncorrected(t)]
        sig = [f"{m} {label}" for m, _, label, t in tests if isnum(t.get("p_holm")) and t["p_holm"] < ALPHA]
        out.append(f"Tests: p (paired t) is uncorrected; p (Holm) is corrected over the study's {m_holm} Oracle-vs-Random "
                   "tests (docs/statistics.md#multiple-comparisons). Significant after Holm: "
                   + (", ".join(sig) or "none") + (f"; {UNCORRECTED}: {', '.join(unc)}." if unc else "."))
    else:
        out.append("Tests: the p-values are uncorrected; this results.json has no Holm-corrected p "
                   "(docs/statistics.md#multiple-comparisons).")
    if per_test:
        for name, label in _metrics_of(res):
            nd = 2 if name == "mu95" else 3
            cells = []
            for m, tname, _, t in tests:
                if tname != name or not t:
                    continue
                n = t.get("n")
                cells.append(f"{m} p = {fmt_p(t.get('p_t'), n)}, Holm {fmt_p(t.get('p_holm'), n)}, MDD {fmt_mdd(t, nd)}"
                             + (f" ({UNCORRECTED})" if only_uncorrected(t) else ""))
            if cells:
                out.append(f"{label}: " + "; ".join(cells) + ".")
    pc = res.get("positive_control")
    if isinstance(pc, dict):
        n = (pc.get("test") or {}).get("n")
        out.append(f"Positive control: detected (paired t p = {fmt_p(pc.get('p'), n)}; one pre-specified test, not "
                   "corrected)." if pc.get("detected") else
                   f"Positive control: **not detected** (paired t p = {fmt_p(pc.get('p'), n)}): this run cannot see a "
                   "difference that exists by construction, so a null result above says nothing about the paper's question.")
    else:
        out.append("Positive control: not in this results.json, so nothing shows this run could detect a real difference.")
    return out


# What makes the controlled study a faithful instrument (docs/studies.md#faithfulness): theta_r does not know the
# forget set, keeps the retain set, the injection stores the forget set in V_tgt without a norm signature, and
# theta_o sits at least halfway to the practical FQ ceiling.
FAITHFUL = {"theta_r_forget_es": 0.10, "theta_r_retain_es": 0.95, "inject_es": 0.90, "norm_ratio": 1.5,
            "retain_kept": 0.9, "fq_fraction": 0.5}


def theta_o_values(res: dict, key: str) -> list[float]:
    """`key` of theta_o, one value per seed: every run's first trajectory point is its seed's theta_o."""
    by_seed = {r["seed"]: r["trajectory"][0].get(key) for r in res["runs"] if r.get("trajectory")}
    return [v for v in by_seed.values() if isnum(v)]


def faithfulness(res: dict) -> list[tuple[str, bool | None]]:
    """(text, met) per criterion of docs/studies.md#faithfulness; met is None where results.json lacks it."""
    f, out = FAITHFUL, []
    tr = res.get("theta_r") or {}
    fe, re_ = tr.get("forget_es"), tr.get("retain_es")
    out.append((f"theta_r forget ES {fmt(fe)} (<= {f['theta_r_forget_es']:.2f})",
                fe <= f["theta_r_forget_es"] if isnum(fe) else None))
    out.append((f"theta_r retain ES {fmt(re_)} (>= {f['theta_r_retain_es']:.2f})",
                re_ >= f["theta_r_retain_es"] if isnum(re_) else None))
    inj = res.get("injection") or []
    es = [r.get("forget_es") for r in inj if isnum(r.get("forget_es"))]
    nr = [r.get("norm_ratio") for r in inj if isnum(r.get("norm_ratio"))]
    out.append((f"injection forget ES {fmt(min(es)) if es else 'n/a'}..{fmt(max(es)) if es else 'n/a'} "
                f"(>= {f['inject_es']:.2f})", min(es) >= f["inject_es"] if es else None))
    out.append((f"V_tgt/rest norm ratio <= {fmt(max(nr), 2) if nr else 'n/a'} (<= {f['norm_ratio']})",
                max(nr) <= f["norm_ratio"] if nr else None))
    # the injection must not cost the retain set: theta_o's retain ES (every run's point 0) vs theta_r's
    rs0 = theta_o_values(res, "RS")
    if rs0 and isnum(re_):
        out.append((f"theta_o retain ES {fmt(min(rs0))} (>= {f['retain_kept']} x theta_r's {fmt(re_)})",
                    min(rs0) >= f["retain_kept"] * re_))
    else:
        out.append(("theta_o retain ES vs theta_r's", None))
    practical = (res.get("fq_ceiling") or {}).get("practical") or {}
    start = theta_o_values(res, "log10_FQ")
    ceil = practical.get("log10_fq")
    if start and isnum(ceil):
        got = mean_std(start)[0]
        out.append((f"theta_o log10 FQ {fmt(got, 2)} vs practical ceiling {fmt(ceil, 2)} (at least halfway)",
                    got <= f["fq_fraction"] * ceil))
    else:
        out.append(("theta_o vs the practical FQ ceiling", None))
    return out


def faithfulness_line(res: dict) -> str:
    items = faithfulness(res)
    known = [ok for _, ok in items if ok is not None]
    mu = (res.get("theta_r") or {}).get("MU")
    mu0 = theta_o_values(res, "MU")
    sets = (res.get("theta_r") or {}).get("MU_sets")
    mus = ([f"theta_r {fmt(mu)}"] if isnum(mu) else []) + ([f"theta_0 {fmt(mean_std(mu0)[0])}"] if mu0 else [])
    return (f"Faithfulness (docs/studies.md#faithfulness): {sum(known)} of {len(items)} criteria met"
            + (f" ({len(items) - len(known)} not recorded)" if len(known) < len(items) else "") + ": "
            + "; ".join(f"{t.removesuffix(': not recorded')}: {'met' if ok else 'NOT met' if ok is not None else 'not recorded'}"
                        for t, ok in items)
            + (f". Model Utility {', '.join(mus)}" + (f" (on {', '.join(sets)})" if sets else "") if mus else "") + ".")


def comparison_table(res: dict, metric: str) -> Table:
    """The paper's Table 2 layout for one metric: rows = methods, Oracle vs Random with paired tests,
    the t interval of the difference (the CI to read), the percentile bootstrap (docs/statistics.md#bootstrap-interval; see
    evaluate.stats for why it is not a 95% CI at n <= 5), the minimum detectable difference (docs/statistics.md#minimum-detectable-difference-mdd)
    and, for MU95, how many values are censored (MU never fell below 0.95 MU0, docs/statistics.md#censoring)."""
    nd = 2 if metric == "mu95" else 3
    rows, notes, censored_any, uncorrected = [], [], False, []
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
        cells += [fmt(t.get("mean_diff"), nd), ci, boot, fmt_p(t.get("p_t"), n), fmt_p(t.get("p_holm"), n),
                  fmt_wilcoxon(t), fmt_mdd(t, nd), str(n)]
        if only_uncorrected(t):
            uncorrected.append(m)
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
               "p (Holm)", "p (Wilcoxon)", MDD_HEADER, "seeds"] + (["censored (O / R)"] if metric == "mu95" else [])
    out = Table(headers, rows)
    if notes:
        out.notes.append(f"{MU95_MARK} MU never fell below 0.95 MU(theta_0) (the last point's log10 FQ is used) in: "
                         + "; ".join(notes) + ".")
    if censored_any:
        out.notes.append("Censored MU95 values (†) are in the tests: the paired t-test, Wilcoxon and MDD above treat "
                         "the last point's value as if MU95 had been observed, so read those p-values with care.")
    m_holm = holm_m(res)
    if m_holm is None:
        out.notes.append("p (paired t) is uncorrected; p (Holm): n/a, this results.json has no Holm-corrected p "
                         "(docs/statistics.md#multiple-comparisons).")
    elif m_holm == 0:
        out.notes.append("p (Holm): no test of this study had a p to correct.")
    else:
        out.notes.append(f"p (paired t) is uncorrected; p (Holm) is it after Holm's correction over the study's {m_holm} "
                         "Oracle-vs-Random tests (every method and metric; docs/statistics.md#multiple-comparisons)"
                         + (f". {UNCORRECTED}: {', '.join(uncorrected)}." if uncorrected else "."))
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
