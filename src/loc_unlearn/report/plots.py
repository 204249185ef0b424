"""Report figures (matplotlib, Agg backend): each function returns a Figure, or None when its data is absent.

`png(fig)` renders a figure to PNG bytes at a fixed dpi with no timestamp metadata, so the same
results give the same bytes (the report is reproducible).
"""
from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # headless: reports are built on servers and in tests
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import hsv_to_rgb, to_hex  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .common import REGIONS, by_seed, isnum, mean_std, methods_of, paired  # noqa: E402
from .tables import check_label, localizers_of  # noqa: E402

COLORS = {"oracle": "#d62728", "random": "#1f77b4"}
PALETTE = plt.get_cmap("tab10").colors
MATCHED = "random~"  # localization study: random vectors with another localizer's per-layer counts


def distinct_colors(n: int, reserved=()) -> list[str]:
    """n colours, all different from each other and from `reserved`: tab10, then tab20's light shades,
    then evenly spaced hues (a plot never gives two series the same colour)."""
    taken = {to_hex(c) for c in reserved}
    pool = [to_hex(c) for c in PALETTE] + [to_hex(c) for c in plt.get_cmap("tab20").colors[1::2]]
    out = [c for c in dict.fromkeys(pool) if c not in taken][:n]
    k = 0
    while len(out) < n:
        c = to_hex(hsv_to_rgb((k * 0.618034 % 1.0, 0.65, 0.8)))
        if c not in taken and c not in out:
            out.append(c)
        k += 1
    return out


def localizer_styles(names: list[str]) -> dict[str, tuple[str, str]]:
    """(colour, line style) per localizer: one colour each; `random~X` dashed as a second cue."""
    cols = distinct_colors(len(names))
    return {n: (c, "--" if n.startswith(MATCHED) else "-") for n, c in zip(names, cols)}


def _bars_with_errors(ax, x, means, stds, ns, width, color, label=None, capsize=3):
    """Bars of `means`; error bars only where there are 2+ values (n = 1 has no spread to show)."""
    ax.bar(x, np.nan_to_num(np.asarray(means, dtype=float)), width, color=color, label=label)
    keep = [i for i, (s, n) in enumerate(zip(stds, ns)) if n > 1 and isnum(s)]
    if keep:
        ax.errorbar(np.asarray(x, dtype=float)[keep], np.asarray(means, dtype=float)[keep],
                    yerr=np.asarray(stds, dtype=float)[keep], fmt="none", ecolor="black", elinewidth=1, capsize=capsize)


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _panels(n: int, size: float = 3.4):
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + 0.3), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _xy(run: dict):
    pts = [p for p in run.get("trajectory") or [] if isnum(p.get("FS")) and isnum(p.get("RS"))]
    return [p["FS"] for p in pts], [p["RS"] for p in pts]


def _traj_axes(ax, title: str):
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="FS (forget score)", ylabel="RS (retain score)", title=title)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)


def trajectories(res: dict):
    """FS-vs-RS trajectory per run: one panel per unlearning method, one line per seed (or localizer)."""
    runs = [r for r in res["runs"] if _xy(r)[0]]
    if not runs:
        return None
    methods = methods_of(runs)
    fig, axes = _panels(len(methods))
    for ax, m in zip(axes, methods):
        if res["study"] == "controlled":
            groups = [(reg, COLORS[reg], [r for r in runs if r["method"] == m and r["region"] == reg]) for reg in REGIONS]
        else:
            styles = localizer_styles(localizers_of(res["runs"]))
            groups = [(loc, styles[loc], [r for r in runs if r["method"] == m and r["localizer"] == loc])
                      for loc in styles]
        for label, color, sel in groups:
            color, ls = color if isinstance(color, tuple) else (color, "-")
            for j, r in enumerate(sel):
                x, y = _xy(r)
                ax.plot(x, y, marker="o", ls=ls, color=color, ms=3, lw=1.2, alpha=0.8, label=label if j == 0 else None)
                ax.plot(x[:1], y[:1], "s", color="black", ms=4)  # theta_0, the start of every trajectory
        _traj_axes(ax, m)
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle("Unlearning trajectories (black square = start; up and right is better)", fontsize=10)
    fig.tight_layout()
    return fig


def aues_bars(res: dict):
    """Left: Oracle vs Random AUES (mean, error bar = std over seeds). Right: Oracle - Random with its 95%
    t interval (the bootstrap interval only for results without one), p (paired t) above each bar's
    error bar. One seed: bars without error bars."""
    methods = methods_of(res["runs"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(7, 2.2 * len(methods) + 3), 3.4))
    x = np.arange(len(methods))
    for k, reg in enumerate(REGIONS):
        vals = [list(by_seed(res["runs"], m, reg, "aues").values()) for m in methods]
        ms = [mean_std(v) for v in vals]
        _bars_with_errors(a1, x + (k - 0.5) * 0.38, [v[0] for v in ms], [v[1] for v in ms],
                          [sum(isnum(u) for u in v) for v in vals], 0.38, COLORS[reg], reg.capitalize())
    a1.set(xticks=x, xticklabels=methods, ylabel="AUES", ylim=(0, 1), title="AUES (mean ± std over seeds)")
    a1.legend(fontsize=8)
    tests = [paired(res, m, "aues") for m in methods]
    use_t = any(isnum(t.get("t_ci_low")) for t in tests)
    lo_key, hi_key = ("t_ci_low", "t_ci_high") if use_t else ("ci_low", "ci_high")
    d = np.array([t.get("mean_diff", np.nan) for t in tests], dtype=float)
    lo = np.array([t.get(lo_key, np.nan) for t in tests], dtype=float)
    hi = np.array([t.get(hi_key, np.nan) for t in tests], dtype=float)
    ns = [t.get("n", 0) if isinstance(t.get("n"), int) else 0 for t in tests]
    a2.bar(x, np.nan_to_num(d), 0.5, color="#7f7f7f")
    keep = [i for i in range(len(methods)) if ns[i] > 1 and isnum(lo[i]) and isnum(hi[i]) and isnum(d[i])]
    if keep:
        err = np.vstack([d[keep] - lo[keep], hi[keep] - d[keep]])
        a2.errorbar(x[keep], d[keep], yerr=np.clip(err, 0, None), fmt="none", ecolor="black", elinewidth=1, capsize=4)
    a2.axhline(0, color="black", lw=0.8)
    tops = [max(v for v in (0.0, d[i], hi[i] if i in keep else np.nan) if isnum(v)) for i in range(len(methods))]
    ymin, ymax = a2.get_ylim()
    span = max(ymax - ymin, 1e-9)
    for i, t in enumerate(tests):
        p = t.get("p_t")
        label = f"p={p:.2f}" if isnum(p) else ("p=n/a (1 seed)" if ns[i] < 2 else "p=n/a")
        if isnum(t.get("mdd")) and ns[i] > 1:
            label += f"\nMDD {t['mdd']:.2f}"  # what this many seeds could have detected (docs/statistics.md#minimum-detectable-difference-mdd)
        # above the top of the error bar (or of the bar), never on it
        a2.annotate(label, (x[i], tops[i]), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                    fontsize=8)
    a2.set_ylim(ymin, max(ymax, max(tops) + 0.02 * span) + 0.15 * span)  # room for the labels
    what = ("95% t interval" if use_t else "bootstrap percentile interval") if keep else "no interval from 1 seed"
    a2.set(xticks=x, xticklabels=methods, ylabel="AUES Oracle - Random", title=f"Difference ({what})")
    fig.tight_layout()
    return fig


def _integer_layer_ticks(ax, n_layers: int, layers=None):
    """Layer axes show whole layer numbers only: every layer up to 32 layers, else integer steps."""
    if n_layers <= 32:
        ax.set_xticks(list(layers) if layers is not None else list(range(n_layers)))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def mask_layers(res: dict):
    """Value vectors per layer of each mask: where each region / localizer puts its budget."""
    series = []
    for m in res.get("masks") or []:
        if res["study"] == "controlled":
            if m.get("seed", 0) == 0:
                series.append((f"{m['name']} (seed 0)", m["per_layer_counts"]))
        else:
            series.append((m["localizer"], m["per_layer_counts"]))
    for r in res.get("localization_check") or []:
        if r.get("seed", 0) == 0 and r.get("per_layer_counts"):
            series.append((f"{check_label(r)} (localized on theta_o)", r["per_layer_counts"]))
    if not series:
        return None
    n_layers = max(len(c) for _, c in series)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * n_layers + 3), 3.4))
    if res["study"] == "controlled":
        # the study's own regions keep their colours; every other series (e.g. the `random` localizer next
        # to the Random region) gets one nobody else has
        fixed = {f"{reg} (seed 0)": COLORS[reg] for reg in REGIONS}
        others = distinct_colors(len(series), reserved=COLORS.values())
        styles = {}
        for label, _ in series:
            styles[label] = (fixed[label], "-") if label in fixed else (others[len(styles)], "-")
    else:
        styles = localizer_styles([label for label, _ in series])
    for label, counts in series:
        color, ls = styles[label]
        ax.plot(range(len(counts)), counts, marker="o", ls=ls, ms=3, color=color, label=label)
    ax.set(xlabel="layer", ylabel="value vectors in mask", title="Mask distribution over layers", ylim=(0, None))
    _integer_layer_ticks(ax, n_layers)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return fig


def localization_check(res: dict):
    """Precision / recall at recovering V_tgt per localization method; dashed = a random mask's expectation."""
    rows = res.get("localization_check") or []
    if not rows:
        return None
    methods = list(dict.fromkeys(check_label(r) for r in rows))  # global and per_layer rows apart
    x = np.arange(len(methods))
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(methods) + 2), 3.4))
    for k, (key, color) in enumerate((("precision", "#2ca02c"), ("recall", "#9467bd"))):
        vals = [[r[key] for r in rows if check_label(r) == m] for m in methods]
        ms = [mean_std(v) for v in vals]
        _bars_with_errors(ax, x + (k - 0.5) * 0.38, [v[0] for v in ms], [v[1] for v in ms],
                          [sum(isnum(u) for u in v) for v in vals], 0.38, color, key)
    if isnum(res.get("ratio")):
        ax.axhline(res["ratio"], color="black", ls="--", lw=1, label=f"random expectation ({res['ratio']:.2f})")
    ax.set(xticks=x, xticklabels=methods, ylim=(0, 1), ylabel="fraction", title="Localization check: recovering V_tgt")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def output_fit_residuals(res: dict):
    per = (res.get("output_fit") or {}).get("per_layer") or []
    if not per:
        return None
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(per) + 3), 3.2))
    layers = [r["layer"] for r in per]
    ax.bar(layers, [r["residual"] if isnum(r["residual"]) else 0.0 for r in per], color="#8c564b")
    _integer_layer_ticks(ax, max(layers) + 1, layers)
    ax.axhline(1, color="black", ls="--", lw=1, label="1 = no update")
    ax.set(xlabel="layer", ylabel="relative residual", ylim=(0, 1.1),
           title="Can a random region reproduce the injected output? (0 = exactly)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
