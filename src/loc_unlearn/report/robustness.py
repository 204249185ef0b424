"""The report's Robustness section (docs/attacks.md), from results.json `robustness` (studies/robustness.py).

Recovery curves R(k) (mean and std over seeds per method, Oracle vs Random, or one line per localizer),
the relearning and quantization tables (FS before/after per bits, with the quantized theta_o / theta_r
references), the Oracle-vs-Random paired tests (controlled study) and one headline line per method.
Means and stds are recomputed from the rows; p-values, intervals and MDDs come from the stored tests.
"""
from __future__ import annotations

import numpy as np

from .common import (ALPHA, BOOT_HEADER, CI_HEADER, MDD_HEADER, POWER_LABEL, REGIONS, Table, fmt, fmt_interval,
                     UNCORRECTED, fmt_mdd, fmt_ms, fmt_p, fmt_wilcoxon, isnum, mean_std, methods_of)

UNDERPOWERED_MDD = 0.1
"""A non-significant test whose MDD exceeds this is called underpowered: R and FS share the 0-to-1 scale,
and a comparison that could only have seen differences above a tenth of it says little (docs/statistics.md#minimum-detectable-difference-mdd)."""
CHECKPOINT_LABEL = {"final": "final", "mu95": "MU95"}


def rob(res: dict) -> dict:
    return res.get("robustness") or {}


def group_key(res: dict) -> str:
    return "region" if res.get("study") == "controlled" else "localizer"


def groups_of(res: dict) -> list[str]:
    if res.get("study") == "controlled":
        return list(REGIONS)
    return list(dict.fromkeys(r["localizer"] for r in rob(res).get("runs") or []))


def values(res: dict, method: str, group: str, checkpoint: str, metric: str) -> list[float]:
    """The metric over seeds (controlled) or the single value (localization) of one cell; None/NaN dropped."""
    g = group_key(res)
    return [r[metric] for r in rob(res).get("runs") or [] if r["method"] == method and r[g] == group
            and r["checkpoint"] == checkpoint and isnum(r.get(metric))]


def test_of(res: dict, checkpoint: str, method: str, metric: str) -> dict:
    return next((t for t in rob(res).get("tests") or [] if t.get("checkpoint") == checkpoint
                 and t.get("method") == method and t.get("metric") == metric), {})


def _metrics(res: dict, kind: str) -> list[dict]:
    return [m for m in rob(res).get("metrics") or [] if m["kind"] == kind]


def _label(spec: dict) -> str:
    if spec["kind"] == "recovery":
        return f"R({spec['k']})" + ("" if spec["variant"] == "forget_relearn" else f" [{spec['variant']}]")
    return f"FS {spec['bits']}" + ("" if spec["bits"] == "nf4" else "-bit")


def verdict(t: dict) -> str:
    """'significant' / 'not significant' / 'underpowered' (not significant, MDD > UNDERPOWERED_MDD) / 'not testable'.
    With a Holm-corrected p (the robustness family, docs/statistics.md#multiple-comparisons) significance is read
    from it, and a test significant only uncorrected says so."""
    p, n, mdd = t.get("p_t"), t.get("n"), t.get("mdd")
    if not isnum(p):
        return f"not testable ({n} seed)" if isinstance(n, int) and n < 2 else "not testable"
    if isnum(t.get("p_holm")):
        if t["p_holm"] < ALPHA:
            return f"significant at {ALPHA} after Holm"
        if p < ALPHA:
            return UNCORRECTED
    elif p < ALPHA:
        return f"significant at {ALPHA}"
    return "underpowered" if isnum(mdd) and mdd > UNDERPOWERED_MDD else f"not significant at {ALPHA}"


def headline(res: dict) -> list[str]:
    """One line per method: R at the largest k (forget_relearn, final checkpoint), Oracle vs Random or the
    localizers' range, with p and MDD (controlled)."""
    r = rob(res)
    spec = [m for m in _metrics(res, "recovery") if m["variant"] == (r.get("settings") or {}).get("relearn_data", [""])[0]]
    if not r.get("runs") or not spec:
        return []
    spec = max(spec, key=lambda m: m["k"])
    lines = []
    for m in methods_of(r["runs"]):
        cells = [(g.capitalize() if res.get("study") == "controlled" else g) + (" recovers R = " if i == 0 else " ")
                 + fmt_ms(values(res, m, g, "final", spec["metric"]), 2) for i, g in enumerate(groups_of(res))]
        line = f"**{m}**: after {spec['k']} relearning steps ({spec['variant']}) " + " vs ".join(cells)
        t = test_of(res, "final", m, spec["metric"])
        if t:
            holm = f", Holm {fmt_p(t.get('p_holm'), t.get('n'))}" if isnum(t.get("p_holm")) else ""
            line += f" (p = {fmt_p(t.get('p_t'), t.get('n'))}{holm}; MDD {fmt(t.get('mdd'), 2)}): {verdict(t)}"
        lines.append(line + ".")
    return lines


def recovery_table(res: dict) -> Table:
    """R(k) per (method, region/localizer, checkpoint): mean ± std over seeds for every k and variant."""
    specs = _metrics(res, "recovery")
    rows = []
    for m in methods_of(rob(res)["runs"]):
        for ck in CHECKPOINT_LABEL:
            for g in groups_of(res):
                rows.append([m, CHECKPOINT_LABEL[ck], g] + [fmt_ms(values(res, m, g, ck, s["metric"])) for s in specs])
    notes = ["R(k) = (ES_k - ES_u) / (ES_o - ES_u) on the probe half after k all-parameter fine-tuning steps "
             "(docs/attacks.md#recovery-rk): 0 = nothing back, 1 = all back. [retain] = the benign variant (retain rows only). "
             "n/a: R undefined (ES_o = ES_u)."]
    return Table(["method", "checkpoint", group_key(res)] + [_label(s) for s in specs], rows, notes)


def quantization_table(res: dict) -> Table:
    """FS and RS before and after RTN per bits, per (method, region/localizer, checkpoint), with the
    quantized references (theta_o / theta_r, or the full-data model) first."""
    bits = (rob(res).get("settings") or {}).get("bits") or []
    cols = ["before", *[b if b == "nf4" else f"{b}bit" for b in bits]]
    headers = ["model", "checkpoint", *[f"FS {c}" for c in cols], *[f"RS {c}" for c in cols]]
    rows = []
    for ref in dict.fromkeys(r["model"] for r in rob(res).get("references") or []):
        sel = [r for r in rob(res)["references"] if r["model"] == ref]
        rows.append([f"{ref} (reference)", "-"] + [fmt_ms([r.get(f"{k}_{c}") for r in sel]) for k in ("FS", "RS") for c in cols])
    g = group_key(res)
    for m in methods_of(rob(res)["runs"]):
        for ck in CHECKPOINT_LABEL:
            for grp in groups_of(res):
                rows.append([f"{m} {grp}", CHECKPOINT_LABEL[ck]] +
                            [fmt_ms(values(res, m, grp, ck, f"{k}_{c}")) for k in ("FS", "RS") for c in cols])
    s = rob(res).get("settings") or {}
    notes = [f"Weight-only round-to-nearest per group of {s.get('group_size')} input weights "
             f"({'symmetric' if s.get('symmetric') else 'asymmetric'}; {'+'.join(s.get('include') or [])}), "
             "docs/attacks.md#quantization-attack. FS = 1 - forget ES, RS = retain ES (token metrics, no generation). A quantized unlearned "
             "model whose FS drops towards its reference's has had forgetting undone by rounding."]
    if g == "region":
        notes.append("Reference theta_o: mean ± std over the seeds' injected models.")
    return Table(headers, rows, notes)


def tests_table(res: dict) -> Table | None:
    """Oracle vs Random paired over seeds per checkpoint x method x metric (controlled study only)."""
    if not rob(res).get("tests"):
        return None
    rows = []
    for ck in CHECKPOINT_LABEL:
        for m in methods_of(rob(res)["runs"]):
            for spec in rob(res).get("metrics") or []:
                t = test_of(res, ck, m, spec["metric"])
                n = t.get("n")
                few = isinstance(n, int) and n < 2
                rows.append([CHECKPOINT_LABEL[ck], m, _label(spec), fmt_ms(values(res, m, "oracle", ck, spec["metric"])),
                             fmt_ms(values(res, m, "random", ck, spec["metric"])), fmt(t.get("mean_diff")),
                             fmt_p(None, n) if few else fmt_interval(t.get("t_ci_low"), t.get("t_ci_high")),
                             fmt_p(None, n) if few else fmt_interval(t.get("ci_low"), t.get("ci_high")),
                             fmt_p(t.get("p_t"), n), fmt_p(t.get("p_holm"), n), fmt_wilcoxon(t) if t else "n/a",
                             fmt_mdd(t) if t else "n/a", verdict(t) if t else "n/a"])
    notes = [f"Paired over seeds as in docs/statistics.md#pairing (diff = Oracle - Random). MDD: a true difference of this size or more "
             f"would have been detected by the two-sided paired t-test at {ALPHA} with power {POWER_LABEL}, given n "
             f"and the sd of the per-seed differences (docs/statistics.md#minimum-detectable-difference-mdd); 'underpowered' = not significant with an MDD above "
             f"{UNDERPOWERED_MDD}, so a non-significant p says little about differences that size."]
    return Table(["checkpoint", "method", "metric", "Oracle", "Random", "diff (O-R)", CI_HEADER, BOOT_HEADER,
                  "p (paired t)", "p (Holm)", "p (Wilcoxon)", MDD_HEADER, "verdict"], rows,
                 notes + ["p (Holm): corrected over the robustness tests of this study, a family of their own "
                          "(docs/statistics.md#multiple-comparisons); n/a in results written before the correction."])


def recovery_curves(res: dict):
    """R(k) vs k, one panel per method; Oracle vs Random (mean, band = std over seeds) or one line per
    localizer; solid = final checkpoint, dashed = MU95 checkpoint; the first relearn variant."""
    from .plots import COLORS, _panels, localizer_styles, plt

    specs = [s for s in _metrics(res, "recovery") if s["variant"] == _metrics(res, "recovery")[0]["variant"]] \
        if _metrics(res, "recovery") else []
    if not rob(res).get("runs") or not specs:
        return None
    methods = methods_of(rob(res)["runs"])
    fig, axes = _panels(len(methods), size=3.0)
    styles = ({g: COLORS[g] for g in REGIONS} if res.get("study") == "controlled"
              else {g: c for g, (c, _) in localizer_styles(groups_of(res)).items()})
    ks = [0] + [s["k"] for s in specs]
    lines = [(ck, ls) for ck, ls in (("final", "-"), ("mu95", "--")) if ck in _checkpoints(res)]
    for ax, m in zip(axes, methods):
        for ck, ls in lines:
            for g in groups_of(res):
                stats = [(0.0, 0.0)] + [mean_std(values(res, m, g, ck, s["metric"])) for s in specs]
                mu, sd = np.array([a for a, _ in stats]), np.array([b for _, b in stats])
                ax.plot(ks, mu, ls=ls, marker="o", ms=3, color=styles[g], label=f"{g} ({CHECKPOINT_LABEL[ck]})")
                if res.get("study") == "controlled":
                    ax.fill_between(ks, mu - sd, mu + sd, color=styles[g], alpha=0.12, lw=0)
        ax.axhline(1.0, color="black", lw=0.6, ls=":")
        ax.set(xlabel="relearning steps k", ylabel="recovery R(k)", title=m)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(f"Relearning attack ({specs[0]['variant']}): 0 = nothing back, 1 = back to theta_o", fontsize=9)
    fig.tight_layout()
    return fig


def _checkpoints(res: dict) -> list[str]:
    # results written before the setting existed attacked both
    return (rob(res).get("settings") or {}).get("checkpoints") or ["final", "mu95"]


def sections(res: dict, plot) -> list[tuple[str, list]]:
    """[("Robustness (docs/attacks.md)", blocks)] or [] without `robustness`; `plot(fig, name, caption)` -> blocks."""
    r = rob(res)
    if not r.get("runs"):
        return []
    s = r.get("settings") or {}
    both = "mu95" in _checkpoints(res)
    at = ("at its final checkpoint and at its MU95 checkpoint (the first saved checkpoint at or after MU falls below "
          "0.95 MU0; the final one if it never does)" if both else "at its final checkpoint")
    intro = (f"Attacks on every unlearned model {at}: relearning for "
             f"k in {s.get('schedule')} steps ({', '.join(s.get('relearn_data') or [])}) and RTN quantization at "
             f"{', '.join(map(str, s.get('bits') or []))} bits (`study.robustness={s.get('level')}`).")
    blocks = [intro, *headline(res),
              *plot(recovery_curves(res), "robustness_recovery.png",
                    "Recovery R(k) per method (band = std over seeds); solid = final checkpoint"
                    + (", dashed = MU95 checkpoint." if both else ".")),
              recovery_table(res), quantization_table(res)]
    t = tests_table(res)
    return [("Robustness (docs/attacks.md)", blocks + ([t] if t else []))]


def cli_lines(res: dict) -> list[str]:
    """Plain-text robustness table for the terminal: final checkpoint, every metric, per method."""
    r = rob(res)
    if not r.get("runs"):
        return []
    groups = groups_of(res)
    lines = ["", f"Robustness (docs/attacks.md, final checkpoint; {r['settings'].get('level')}):",
             f"{'method':8s} {'metric':10s} " + " ".join(f"{g[:14]:>14s}" for g in groups)
             + (f" {'p(t)':>13s} {'p(Holm)':>13s}  MDD (n, sd)" if r.get("tests") else "")]
    for m in methods_of(r["runs"]):
        for spec in r.get("metrics") or []:
            cells = [fmt_ms(values(res, m, g, "final", spec["metric"]), 2) for g in groups]
            line = f"{m:8s} {_label(spec):10s} " + " ".join(f"{c:>14s}" for c in cells)
            if r.get("tests"):
                t = test_of(res, "final", m, spec["metric"])
                line += (f" {fmt_p(t.get('p_t'), t.get('n')):>13s} {fmt_p(t.get('p_holm'), t.get('n')):>13s}  "
                         f"{fmt_mdd(t, 2) if t else 'n/a'}")
            lines.append(line)
    return lines
