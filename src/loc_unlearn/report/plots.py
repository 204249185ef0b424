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

from .tables import REGIONS, by_seed, isnum, localizers_of, mean_std, methods_of, paired  # noqa: E402

COLORS = {"oracle": "#d62728", "random": "#1f77b4"}
PALETTE = plt.get_cmap("tab10").colors


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
            groups = [(loc, PALETTE[i % 10], [r for r in runs if r["method"] == m and r["localizer"] == loc])
                      for i, loc in enumerate(localizers_of(res["runs"]))]
        for label, color, sel in groups:
            for j, r in enumerate(sel):
                x, y = _xy(r)
                ax.plot(x, y, "-o", color=color, ms=3, lw=1.2, alpha=0.8, label=label if j == 0 else None)
                ax.plot(x[:1], y[:1], "s", color="black", ms=4)  # theta_0, the start of every trajectory
        _traj_axes(ax, m)
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle("Unlearning trajectories (black square = start; up and right is better)", fontsize=10)
    fig.tight_layout()
    return fig


def aues_bars(res: dict):
    """Left: Oracle vs Random AUES (mean, error bar = std over seeds). Right: Oracle - Random, bootstrap 95% CI."""
    methods = methods_of(res["runs"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(7, 2.2 * len(methods) + 3), 3.4))
    x = np.arange(len(methods))
    for k, reg in enumerate(REGIONS):
        ms = [mean_std(list(by_seed(res["runs"], m, reg, "aues").values())) for m in methods]
        a1.bar(x + (k - 0.5) * 0.38, [v[0] for v in ms], 0.38, yerr=[v[1] for v in ms], capsize=3,
               color=COLORS[reg], label=reg.capitalize())
    a1.set(xticks=x, xticklabels=methods, ylabel="AUES", ylim=(0, 1), title="AUES (mean ± std over seeds)")
    a1.legend(fontsize=8)
    tests = [paired(res, m, "aues") for m in methods]
    d = np.array([t.get("mean_diff", np.nan) for t in tests], dtype=float)
    lo = np.array([t.get("ci_low", np.nan) for t in tests], dtype=float)
    hi = np.array([t.get("ci_high", np.nan) for t in tests], dtype=float)
    err = np.nan_to_num(np.vstack([d - lo, hi - d]))
    a2.bar(x, np.nan_to_num(d), 0.5, yerr=err, capsize=4, color="#7f7f7f")
    a2.axhline(0, color="black", lw=0.8)
    for i, t in enumerate(tests):
        p = t.get("p_t")
        a2.annotate(f"p={p:.2f}" if isnum(p) else "p=n/a", (x[i], 0), xytext=(0, -14 if d[i] >= 0 else 6),
                    textcoords="offset points", ha="center", fontsize=8)
    a2.set(xticks=x, xticklabels=methods, ylabel="AUES Oracle - Random", title="Difference (bootstrap 95% CI)")
    fig.tight_layout()
    return fig


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
            series.append((f"{r['method']} (localized on theta_o)", r["per_layer_counts"]))
    if not series:
        return None
    n_layers = max(len(c) for _, c in series)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * n_layers + 3), 3.4))
    for i, (label, counts) in enumerate(series):
        color = COLORS.get(label.split(" ")[0], PALETTE[(i + 2) % 10])
        ax.plot(range(len(counts)), counts, "-o", ms=3, color=color, label=label)
    ax.set(xlabel="layer", ylabel="value vectors in mask", title="Mask distribution over layers", ylim=(0, None))
    if n_layers <= 32:
        ax.set_xticks(range(n_layers))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    return fig


def localization_check(res: dict):
    """Precision / recall at recovering V_tgt per localization method; dashed = a random mask's expectation."""
    rows = res.get("localization_check") or []
    if not rows:
        return None
    methods = list(dict.fromkeys(r["method"] for r in rows))
    x = np.arange(len(methods))
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(methods) + 2), 3.4))
    for k, (key, color) in enumerate((("precision", "#2ca02c"), ("recall", "#9467bd"))):
        ms = [mean_std([r[key] for r in rows if r["method"] == m]) for m in methods]
        ax.bar(x + (k - 0.5) * 0.38, [v[0] for v in ms], 0.38, yerr=[v[1] for v in ms], capsize=3, color=color, label=key)
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
    ax.bar([r["layer"] for r in per], [r["residual"] for r in per], color="#8c564b")
    ax.axhline(1, color="black", ls="--", lw=1, label="1 = no update")
    ax.set(xlabel="layer", ylabel="relative residual", ylim=(0, 1.1),
           title="Can a random region reproduce the injected output? (0 = exactly)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
