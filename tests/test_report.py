"""Study reports: files written, HTML self-contained, table numbers equal to the runs' own statistics."""
import base64
import json
import re

import numpy as np
import pytest
from scipy import stats

from loc_unlearn.commands.study import report as cmd_report
from loc_unlearn.config import build_config
from loc_unlearn.errors import UserError
from loc_unlearn.evaluate.stats import min_detectable_difference
from loc_unlearn.report import build_report, plots

METHODS = ("npo", "wga")
SEEDS = (0, 1)
L = 4
CONFIG = {"study": {"seeds": 2}, "model": {"preset": "tiny", "path": "", "dtype": "float32",
                                           "tiny": {"n_layers": L, "d_ff": 64, "hidden": 32}},
          "data": {"source": "synthetic", "n_authors": 20, "qa_per_author": 20, "forget_split": "forget10"}}


def _trajectory(rng, start_fs, k=5):
    fs = np.clip(start_fs + np.cumsum(rng.uniform(0.05, 0.2, k)), 0, 1)
    rs = np.clip(0.9 - np.cumsum(rng.uniform(0.0, 0.15, k)), 0, 1)
    return [{"step": 0, "FS": start_fs, "RS": 0.9, "MU": 0.4, "log10_FQ": -5.0}] + [
        {"step": i + 1, "FS": float(f), "RS": float(r), "MU": 0.4 - 0.02 * i, "log10_FQ": -5.0 + i}
        for i, (f, r) in enumerate(zip(fs, rs))]


def _controlled(optional: bool, seeds=SEEDS) -> dict:
    rng = np.random.default_rng(0)
    runs = []
    for m in METHODS:
        for reg in ("oracle", "random"):
            for s in seeds:
                runs.append({"method": m, "region": reg, "seed": s, "aues": float(rng.uniform(0.4, 0.7)),
                             "mu95": float(rng.uniform(-6, -1)), "mu95_not_reached": bool(m == "wga" and s == 1),
                             "trajectory": _trajectory(rng, 0.05), "run_dir": f"runs/unlearn-{m}-{reg}-{s}",
                             "extra_field": {"ignored": True}})
    tests = []
    for m in METHODS:
        for metric in ("aues", "mu95"):
            a = [r[metric] for r in runs if r["method"] == m and r["region"] == "oracle"]
            b = [r[metric] for r in runs if r["method"] == m and r["region"] == "random"]
            d = np.subtract(a, b)
            tests.append({"method": m, "metric": metric, "n": len(seeds), "oracle_mean": 0.0, "oracle_std": 0.0,  # wrong
                          "random_mean": 0.0, "random_std": 0.0,  # on purpose: the report must use the runs themselves
                          "mean_diff": float(d.mean()),
                          "p_t": float(stats.ttest_rel(a, b).pvalue) if len(seeds) > 1 else float("nan"),
                          "p_wilcoxon": 0.5, "ci_low": float(d.min()), "ci_high": float(d.max()),
                          "notes": ["bootstrap CI from n=2 pairs is not meaningful"]})
    res = {"study": "controlled", "preset": "tiny", "config": CONFIG, "created": "2025-01-01T00:00:00",
           "elapsed_s": 12.5, "ratio": 0.1, "runs": runs, "tests": tests,
           "injection": [{"seed": s, "forget_es": 0.93, "target_es": 0.85, "full_ft_es": 0.95, "reached": s == 0}
                         for s in seeds],
           "masks": [{"seed": s, "name": n, "per_layer_counts": rng.integers(0, 20, L).tolist()}
                     for s in seeds for n in ("oracle", "random")]}
    if optional:
        res["localization_check"] = [{"seed": 0, "method": lm, "precision": p, "recall": p,
                                      "per_layer_counts": rng.integers(0, 20, L).tolist()}
                                     for lm, p in (("activation", 0.4), ("gradient", 0.7))]
        res["output_fit"] = {"per_layer": [{"layer": i, "residual": 0.2 + 0.1 * i, "n_tokens": 500} for i in range(L)],
                             "theta_o": {"FS": 0.07, "RS": 0.9}, "theta_r": {"FS": 0.8, "RS": 0.91},
                             "stitched": {"FS": 0.3, "RS": 0.88}}
    return res


def _write(tmp_path, res, name="study"):
    d = tmp_path / name
    d.mkdir()
    (d / "results.json").write_text(json.dumps(res))
    return d


def _check_self_contained(html: str, n_plots: int):
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "<link" not in html and "<script" not in html
    imgs = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(imgs) == html.count("<img") == n_plots
    for b in imgs:
        assert base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n"


def _row(md: str, first_cell: str, header_start: str) -> list[str]:
    """Cells of the row starting with `first_cell` in the table whose header starts with `header_start`."""
    table = md.split(header_start, 1)[1].split("\n\n", 1)[0]
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"row {first_cell!r} not found")


@pytest.mark.parametrize("optional", [True, False])
def test_controlled_report(tmp_path, optional):
    res = _controlled(optional)
    d = _write(tmp_path, res)
    out = build_report(d)
    assert out["html"] == d / "report.html" and out["md"] == d / "report.md"
    assert out["html"].is_file() and out["md"].is_file()
    html, md = out["html"].read_text(), out["md"].read_text()
    pngs = sorted(p.name for p in (d / "plots").glob("*.png"))
    # aues bars, trajectories, mask layers (+ localization check, output-fit residuals)
    assert len(pngs) == len(out["plots"]) == (5 if optional else 3)
    _check_self_contained(html, len(pngs))
    for name in pngs:
        assert f"](plots/{name})" in md
    assert ("Localization check" in md) == optional and ("Output reproduction" in md) == optional

    # the tables equal means/stds recomputed here from the runs (not the deliberately wrong test entries)
    for m in METHODS:
        for metric, nd, head in (("aues", 3, "| method | AUES Oracle"), ("mu95", 2, "| method | MU95 Oracle")):
            row = _row(md, m, head)
            for col, reg in ((1, "oracle"), (2, "random")):
                v = np.array([r[metric] for r in res["runs"] if r["method"] == m and r["region"] == reg])
                assert row[col].startswith(f"{v.mean():.{nd}f} ± {v.std(ddof=1):.{nd}f}")
                flagged = any(r["mu95_not_reached"] for r in res["runs"] if r["method"] == m and r["region"] == reg)
                assert row[col].endswith("†") == (metric == "mu95" and flagged)
            t = next(t for t in res["tests"] if t["method"] == m and t["metric"] == metric)
            assert row[6] == f"{t['p_t']:.3f}" and row[5] == f"[{t['ci_low']:.{nd}f}, {t['ci_high']:.{nd}f}]"
            # the t interval and the MDD (absent from these old-style entries) are recomputed from the runs
            a = [r[metric] for r in res["runs"] if r["method"] == m and r["region"] == "oracle"]
            b = [r[metric] for r in res["runs"] if r["method"] == m and r["region"] == "random"]
            ci = stats.ttest_rel(a, b).confidence_interval()
            assert row[4] == f"[{ci.low:.{nd}f}, {ci.high:.{nd}f}]"
            sd = np.std(np.subtract(a, b), ddof=1)
            assert row[7] == "n/a"  # an old-style entry has no Holm p, and the report computes none
            assert row[9] == f"{min_detectable_difference(sd, 2):.{nd}f} (n=2, sd {sd:.{nd}f})"
            assert row[8].startswith("0.500 (min ")  # Wilcoxon cannot reach 0.05 with 2 pairs: its floor is shown
            if metric == "mu95":  # wga seed 1 is censored in both regions
                assert row[11] == ("1 / 1" if m == "wga" else "0 / 0")

    # the headline: one line per method with Oracle vs Random AUES and the p-value, before any table
    head = md.split("## Headline", 1)[1].split("\n## ", 1)[0]
    for m in METHODS:
        t = next(t for t in res["tests"] if t["method"] == m and t["metric"] == "aues")
        line = next(ln for ln in head.splitlines() if ln.startswith(f"- **{m}**"))
        assert f"p = {t['p_t']:.3f}" in line
        assert ("**significant**" in line) == (t["p_t"] < 0.05)
    assert "injection did not reach its target ES for seed(s) 1" in head
    # an old results.json (no p_holm, fq_ceiling, positive control) still renders and says what it lacks
    assert "significant (uncorrected p < 0.05) for" in head
    assert "- FQ ceiling: not recorded in this results.json" in head and "- Positive control: not in this results.json" in head
    assert "- Tests: the p-values are uncorrected; this results.json has no Holm-corrected p" in head
    assert "- Injection: 1 of 2 seed(s) reached the target forget ES (forget ES 0.930 / 0.930 vs target 0.850)" in head
    assert "| 1 | 0.930 | 0.850 | 0.950 | **no** |" in md  # injection table, seed 1 not reached
    if optional:
        assert _row(md, "gradient", "| localization method")[1] == "0.700"
        assert "| stitched theta_r + Delta_R | 0.300 | 0.880 |" in md

    # rebuilding without the optional sections removes their stale plots
    if optional:
        for k in ("localization_check", "output_fit"):
            res.pop(k)
        (d / "results.json").write_text(json.dumps(res))
        out = build_report(d)
        assert len(list((d / "plots").glob("*.png"))) == 3
        _check_self_contained(out["html"].read_text(), 3)


def test_report_is_reproducible(tmp_path):
    res = _controlled(True)
    a, b = _write(tmp_path, res, "a"), _write(tmp_path, res, "b")
    build_report(a), build_report(b)
    for p in ["report.html", "report.md"] + [f"plots/{q.name}" for q in (a / "plots").glob("*.png")]:
        assert (a / p).read_bytes().replace(bytes(str(a), "utf8"), b"") == \
               (b / p).read_bytes().replace(bytes(str(b), "utf8"), b""), p


def test_missing_tests_entries_are_recomputed(tmp_path):
    res = _controlled(False)
    del res["tests"]
    md = build_report(_write(tmp_path, res))["md"].read_text()
    for m in METHODS:
        a = [r["aues"] for r in res["runs"] if r["method"] == m and r["region"] == "oracle"]
        b = [r["aues"] for r in res["runs"] if r["method"] == m and r["region"] == "random"]
        assert _row(md, m, "| method | AUES Oracle")[6] == f"{stats.ttest_rel(a, b).pvalue:.3f}"


def test_localization_report(tmp_path):
    rng = np.random.default_rng(1)
    locs = ("random", "activation", "wagle")
    runs = [{"localizer": loc, "method": m, "aues": float(rng.uniform(0.4, 0.7)), "mu95": float(rng.uniform(-9, -2)),
             "mu95_not_reached": False, "trajectory": _trajectory(rng, 0.1)} for loc in locs for m in METHODS]
    res = {"study": "localization", "preset": "tiny", "ratio": 0.1, "runs": runs,
           "masks": [{"localizer": loc, "per_layer_counts": rng.integers(0, 20, L).tolist()} for loc in locs]}
    out = build_report(_write(tmp_path, res))
    md = out["md"].read_text()
    assert len(out["plots"]) == 2  # trajectories, mask distribution
    _check_self_contained(out["html"].read_text(), 2)
    header = "| localizer | " + " | ".join(f"{m} AUES | {m} MU95" for m in METHODS) + " |"
    assert header in md
    for loc in locs:
        row = _row(md, loc, "| localizer |")
        for j, m in enumerate(METHODS):
            r = next(r for r in runs if r["localizer"] == loc and r["method"] == m)
            assert row[1 + 2 * j].strip("*") == f"{r['aues']:.3f}" and row[2 + 2 * j] == f"{r['mu95']:.2f}"
    for m in METHODS:  # best AUES per method in bold
        best = max((r for r in runs if r["method"] == m), key=lambda r: r["aues"])
        assert _row(md, best["localizer"], "| localizer |")[1 + 2 * METHODS.index(m)].startswith("**")
        line = next(ln for ln in md.splitlines() if ln.startswith(f"- **{m}**"))
        rnd = next(r["aues"] for r in runs if r["method"] == m and r["localizer"] == "random")
        assert f"random mask AUES {rnd:.3f}" in line


def test_bad_input_is_user_error(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        build_report(tmp_path / "nope")
    d = tmp_path / "empty"
    d.mkdir()
    with pytest.raises(UserError, match=re.escape(str(d / "results.json"))):
        build_report(d)
    with pytest.raises(UserError, match="RUN_DIR|run directory"):
        cmd_report(build_config(overrides=[f"runs_dir={tmp_path}"]))
    (d / "results.json").write_text('{"study": "controlled", "runs": [')
    with pytest.raises(UserError, match="not valid JSON.*line 1"):
        build_report(d)
    res = _controlled(False)
    del res["runs"][3]["aues"]
    (d / "results.json").write_text(json.dumps(res))
    with pytest.raises(UserError, match=r"runs\[3\] lacks field 'aues'"):
        build_report(d)
    res = _controlled(False)
    res["study"] = "other"
    (d / "results.json").write_text(json.dumps(res))
    with pytest.raises(UserError, match="controlled, localization"):
        build_report(d)


def test_cli_report(tmp_path, capsys):
    from loc_unlearn.cli import main

    d = _write(tmp_path, _controlled(False))
    assert main(["report", str(d)]) == 0
    assert str(d / "report.html") in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


# ----------------------------------------------------------------------------- one seed, setup, glossary


def _one_seed(tmp_path):
    """A study with one seed, its `tests` written by the study's own paired_tests (NaN p, NaN std)."""
    from loc_unlearn.studies.controlled import paired_tests

    res = _controlled(True, seeds=(0,))
    res["tests"] = paired_tests(res["runs"], list(METHODS))
    res["injection"] = res["injection"][:1]
    return res, _write(tmp_path, res)


def test_one_seed_report_prints_no_nan_and_no_zero_std(tmp_path):
    res, d = _one_seed(tmp_path)
    out = build_report(d)
    for text in (out["md"].read_text(), out["html"].read_text().split("<details>")[0]):
        assert not re.search(r"\bnan\b", text, re.I)
        assert "± 0.000" not in text and "± n/a" not in text
        assert "n/a (1 seed)" in text
    row = _row(out["md"].read_text(), "npo", "| method | AUES Oracle")
    a = next(r["aues"] for r in res["runs"] if r["method"] == "npo" and r["region"] == "oracle")
    assert row[1] == f"{a:.3f}" and row[4:10] == ["n/a (1 seed)"] * 6  # CI, bootstrap, p, p (Holm), Wilcoxon, MDD


def test_one_seed_cli_summary(tmp_path, capsys):
    from loc_unlearn.commands.study import print_controlled_summary as print_summary

    res, d = _one_seed(tmp_path)
    res["elapsed_s"] = 1.0
    print_summary(d)
    out = capsys.readouterr().out
    assert not re.search(r"\bnan\b", out, re.I) and "±" not in out
    assert "n/a (1 seed)" in out and "(1 seed, preset tiny)" in out


def test_cli_summary_several_seeds_shows_mdd_and_censoring(tmp_path, capsys):
    from loc_unlearn.commands.study import print_controlled_summary as print_summary
    from loc_unlearn.studies.controlled import paired_tests

    res = _controlled(False)
    res["tests"] = paired_tests(res["runs"], list(METHODS))
    print_summary(_write(tmp_path, res))
    out = capsys.readouterr().out
    t = next(t for t in res["tests"] if t["method"] == "npo" and t["metric"] == "aues")
    line = next(ln for ln in out.splitlines() if ln.startswith("npo") and "aues" in ln)
    assert f"{t['p_t']:.3f}" in line and f"{t['mdd']:.3f} (n=2, sd {t['sd_diff']:.3f})" in line and "±" in line
    assert "MU95 censored" in out and "wga oracle 1/2, random 1/2" in out
    assert t["n_censored"] == {"oracle": 0, "random": 0}


def test_setup_table_and_glossary(tmp_path):
    import pathlib

    res = _controlled(False)
    md = build_report(_write(tmp_path, res, "from_config"))["md"].read_text()
    assert md.index("## Setup") < md.index("## AUES: Oracle vs Random")
    setup = md.split("## Setup", 1)[1].split("\n## ", 1)[0]
    for cells in (("layers L", "4"), ("MLP width d_ff", "64"), ("forget split", "forget10 (40 QA pairs)"),
                  ("authors", "20"), ("seeds", "2 (0, 1)"), ("parameters", "not recorded")):
        assert f"| {cells[0]} | {cells[1]} |" in setup
    glossary = md.split("## Glossary", 1)[1].split("\n## ", 1)[0]
    for term, ref in (("AUES", "metrics.md#aues"), ("ES", "metrics.md#extraction-strength-es"),
                      ("FS", "metrics.md#forget-and-retain-scores-fs-rs"),
                      ("RS", "metrics.md#forget-and-retain-scores-fs-rs"), ("MU95", "metrics.md#mu95"),
                      ("FQ", "metrics.md#forget-quality-fq"), ("MU", "metrics.md#model-utility-mu"),
                      ("MDD", "statistics.md#minimum-detectable-difference-mdd"),
                      ("Oracle / Random", "studies.md#step-3-oracle-and-random")):
        line = next(ln for ln in glossary.splitlines() if ln.startswith(f"**{term}**:"))
        assert line.endswith(f"Definition: `docs/{ref}`.")
        # the anchor is a heading of that reference page (GitHub's anchor rule)
        page, anchor = ref.split("#")
        docs = pathlib.Path(__file__).resolve().parents[1] / "docs"
        heads = [h.lstrip("#").strip() for h in (docs / page).read_text().splitlines() if h.startswith("#")]
        assert anchor in [re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads]
    # a recorded setup wins over the config
    res["setup"] = {"model": "meta-llama/Llama-3.1-8B-Instruct", "n_params": 8030261248, "n_layers": 32, "d_ff": 14336,
                    "hidden": 4096, "architecture": "llama", "n_forget": 400, "n_retain": 3600, "n_authors": None}
    html = build_report(_write(tmp_path, res, "recorded"))["html"].read_text()
    setup = html.split("<h2>Setup</h2>", 1)[1].split("<h2>", 1)[0]
    for text in ("meta-llama/Llama-3.1-8B-Instruct", "8.03B (8,030,261,248)", "<td>14336</td>", "458,752",
                 "forget10 (400 QA pairs)"):
        assert text in setup
    assert "<details>" in html.split("<h2>Setup</h2>", 1)[1]  # the collapsed config is still there too


def test_setup_info_reads_scale_without_loading_weights(tmp_path, tiny_model_dir):
    from loc_unlearn.config import build_config
    from loc_unlearn.models.load import load_model
    from loc_unlearn.stages import data_source
    from loc_unlearn.studies.common import setup_info

    cfg = build_config(overrides=[f"runs_dir={tmp_path}", "data.n_authors=10", "data.qa_per_author=6",
                                  "data.n_real_authors=8", "data.n_world_facts=8"])
    info = setup_info(cfg, data_source(cfg), tiny_model_dir)
    model, _ = load_model(str(tiny_model_dir))
    assert info["n_params"] == sum(p.numel() for p in model.parameters())
    assert (info["n_layers"], info["d_ff"], info["hidden"], info["architecture"]) == (2, 64, 32, "llama")
    assert (info["n_forget"], info["n_retain"], info["n_authors"]) == (6, 54, 10)  # 1 of 10 authors x 6 QA
    assert "note" not in info
    bad = setup_info(cfg, data_source(cfg), tmp_path / "no-model")
    assert "model scale not read" in bad["note"] and bad["n_forget"] == 6


# ----------------------------------------------------------------------------- plots


def _errorbar_containers(fig):
    from matplotlib.container import ErrorbarContainer

    return [c for ax in fig.axes for c in ax.containers if isinstance(c, ErrorbarContainer)]


def _line_colors(ax):
    from matplotlib.colors import to_hex

    return [to_hex(ln.get_color()) for ln in ax.get_lines() if not ln.get_label().startswith("_")]


def test_output_fit_plot_has_integer_layer_ticks():
    fig = plots.output_fit_residuals(_controlled(True))
    ticks = fig.axes[0].get_xticks()
    assert len(ticks) and all(float(t).is_integer() for t in ticks)
    assert sorted(int(t) for t in ticks) == list(range(L))


def test_single_seed_plots_have_no_error_bars():
    res = _controlled(True, seeds=(0,))
    for fig in (plots.aues_bars(res), plots.localization_check(res)):
        assert not _errorbar_containers(fig)
    assert _errorbar_containers(plots.aues_bars(_controlled(True)))  # 2 seeds: they are drawn


def test_p_labels_sit_above_the_error_bars():
    res = _controlled(False)
    fig = plots.aues_bars(res)
    ax = fig.axes[1]
    (eb,) = [c for c in ax.containers if c in _errorbar_containers(fig)]
    segs = eb.lines[2][0].get_segments()
    labels = [t for t in ax.texts if t.get_text().startswith("p=")]
    assert len(labels) == len(segs) == len(METHODS)
    for seg, lab in zip(sorted(segs, key=lambda s: s[0][0]), sorted(labels, key=lambda t: t.xy[0])):
        top = max(seg[0][1], seg[1][1])
        assert lab.xy[1] >= top - 1e-12 and lab.get_va() == "bottom" and lab.xyann[1] > 0
        assert lab.xy[1] + 0.01 < ax.get_ylim()[1]  # and inside the axes


def test_random_series_get_distinct_colours():
    res = _controlled(True)
    res["localization_check"].append({"seed": 0, "method": "random", "precision": 0.1, "recall": 0.1,
                                      "per_layer_counts": [5] * L})
    ax = plots.mask_layers(res).axes[0]
    colors = _line_colors(ax)
    assert len(colors) == 5 and len(set(colors)) == 5  # oracle, random region, activation, gradient, random localizer
    # localization study with layer-matched controls: 9 localizers, 9 colours, in both plots
    rng = np.random.default_rng(2)
    locs = ["random", "activation", "memflex", "wagle", "gradient"] + [f"random~{x}" for x in
                                                                       ("activation", "memflex", "wagle", "gradient")]
    loc_res = {"study": "localization", "ratio": 0.1,
               "runs": [{"localizer": lc, "method": "npo", "aues": 0.5, "mu95": -3.0, "trajectory": _trajectory(rng, 0.1)}
                        for lc in locs],
               "masks": [{"localizer": lc, "per_layer_counts": [3] * L} for lc in locs]}
    for fig in (plots.mask_layers(loc_res), plots.trajectories(loc_res)):
        colors = _line_colors(fig.axes[0])
        assert len(colors) == len(locs) == len(set(colors))


# ----------------------------------------------------------------------------- robustness (docs/attacks.md)


def _robustness(study: str, groups, seeds, rng) -> dict:
    """A results.json `robustness` section as studies/robustness.py writes it, with spread-out numbers."""
    from loc_unlearn.studies import robustness as rb

    sett = {"level": "reduced", "schedule": [0, 5, 20], "relearn_data": ["forget_relearn"], "bits": ["4", "8"],
            "group_size": 128, "symmetric": True, "include": ["layers"], "split_seed": 0, "checkpoints": ["final", "mu95"]}
    key = "region" if study == "controlled" else "localizer"
    rows = []
    for m in METHODS:
        for g in groups:
            for s in seeds:
                for ck in ("final", "mu95"):
                    es_u, es_o = float(rng.uniform(0.1, 0.2)), 0.9
                    es = {0: es_u, 5: es_u + float(rng.uniform(0, 0.3)), 20: es_u + float(rng.uniform(0.2, 0.7))}
                    r = {"method": m, key: g, "checkpoint": ck, "step": 4, "mu95_reached": True, "es_o": es_o,
                         "relearn": {"forget_relearn": {"es_u": es_u, "recovery_defined": True, "points": [
                             {"k": k, "probe_es": v, "recovery": (v - es_u) / (es_o - es_u)} for k, v in es.items()]}},
                         "R_forget_relearn_k5": (es[5] - es_u) / (es_o - es_u),
                         "R_forget_relearn_k20": (es[20] - es_u) / (es_o - es_u),
                         "FS_before": 0.8, "RS_before": 0.7, "FS_4bit": float(rng.uniform(0.4, 0.8)),
                         "RS_4bit": 0.6, "FS_8bit": float(rng.uniform(0.7, 0.8)), "RS_8bit": 0.7}
                    rows.append(r | ({"seed": s} if study == "controlled" else {}))
    refs = [{"model": "theta_o", "seed": s, "FS_before": 0.1, "FS_4bit": 0.2, "FS_8bit": 0.1,
             "RS_before": 0.7, "RS_4bit": 0.6, "RS_8bit": 0.7} for s in seeds] + \
           [{"model": "theta_r", "FS_before": 0.9, "FS_4bit": 0.9, "FS_8bit": 0.9, "RS_before": 0.7, "RS_4bit": 0.6,
             "RS_8bit": 0.7}]
    out = {"settings": sett, "metrics": rb.metric_names(sett), "runs": rows, "references": refs}
    if study == "controlled":
        out["tests"] = rb.paired_tests(rows, list(METHODS), sett)
    return out


def test_controlled_robustness_section(tmp_path, capsys):
    from loc_unlearn.report import cli_summary

    seeds = (0, 1, 2)
    res = _controlled(False, seeds=seeds)
    res["robustness"] = rob = _robustness("controlled", ("oracle", "random"), seeds, np.random.default_rng(3))
    out = build_report(_write(tmp_path, res))
    md = out["md"].read_text()
    assert "## Robustness (docs/attacks.md)" in md and any(p.name == "robustness_recovery.png" for p in out["plots"])
    _check_self_contained(out["html"].read_text(), len(out["plots"]))
    for m in METHODS:
        vals = {g: [r["R_forget_relearn_k20"] for r in rob["runs"] if r["method"] == m and r["region"] == g
                    and r["checkpoint"] == "final"] for g in ("oracle", "random")}
        ms = {g: f"{np.mean(v):.2f} ± {np.std(v, ddof=1):.2f}" for g, v in vals.items()}
        t = next(t for t in rob["tests"] if (t["checkpoint"], t["method"], t["metric"]) == ("final", m, "R_forget_relearn_k20"))
        assert t["p_t"] == pytest.approx(stats.ttest_rel(vals["oracle"], vals["random"]).pvalue, rel=1e-9)
        line = next(ln for ln in md.splitlines() if ln.startswith(f"- Robustness: **{m}**"))
        assert f"after 20 relearning steps (forget_relearn) Oracle recovers R = {ms['oracle']} vs Random {ms['random']}" in line
        assert f"p = {t['p_t']:.3f}" in line and f"MDD {t['mdd']:.2f}" in line
        want = ("significant at 0.05" if t["p_t"] < 0.05 else "underpowered" if t["mdd"] > 0.1
                else "not significant at 0.05")
        assert line.endswith(f": {want}.")
        row = _row(md, m, "| method | checkpoint | region |")  # first row of the method: final, oracle
        ms3 = f"{np.mean(vals['oracle']):.3f} ± {np.std(vals['oracle'], ddof=1):.3f}"
        assert row[1:3] == ["final", "oracle"] and row[4] == ms3
    assert _row(md, "theta_r (reference)", "| model | checkpoint | FS before |")[2:5] == ["0.900", "0.900", "0.900"]
    assert "| checkpoint | method | metric | Oracle | Random |" in md
    text = "\n".join(cli_summary(res))
    assert "Robustness (docs/attacks.md, final checkpoint; reduced)" in text and "R(20)" in text and "FS 4-bit" in text


def test_localization_robustness_section_has_values_not_tests(tmp_path):
    rng = np.random.default_rng(4)
    locs = ("random", "activation")
    runs = [{"localizer": loc, "method": m, "aues": 0.5, "mu95": -3.0, "mu95_not_reached": False,
             "trajectory": _trajectory(rng, 0.1)} for loc in locs for m in METHODS]
    res = {"study": "localization", "preset": "tiny", "ratio": 0.1, "runs": runs,
           "robustness": _robustness("localization", locs, (None,), rng)}
    md = build_report(_write(tmp_path, res))["md"].read_text()
    assert "## Robustness (docs/attacks.md)" in md and "| checkpoint | method | metric |" not in md
    r = next(r for r in res["robustness"]["runs"] if r["localizer"] == "activation" and r["method"] == "npo"
             and r["checkpoint"] == "final")
    cells = [c.strip() for c in md.split("| npo | final | activation |", 1)[1].split("\n", 1)[0].strip("|").split("|")]
    assert cells[0] == f"{r['R_forget_relearn_k5']:.3f}" and cells[1] == f"{r['R_forget_relearn_k20']:.3f}"


def test_bad_robustness_section_is_user_error(tmp_path):
    res = _controlled(False)
    res["robustness"] = {"settings": {}, "metrics": [], "runs": [{"method": "npo", "region": "oracle"}]}
    with pytest.raises(UserError, match=r"robustness.runs\[0\] lacks field 'checkpoint'"):
        build_report(_write(tmp_path, res))


# ----------------------------------------------------------------------------- Holm and the limits block (issue 22)


def _holm_study():
    """Three seeds; npo's AUES differences nearly constant (p_t ~ 0.003, significant after Holm), wga's
    spread so that p_t ~ 0.035 (below 0.05 uncorrected, above it after Holm); tests from the study's own
    paired_tests (with Holm), fq_ceiling from the study's own function, a detected positive control."""
    from loc_unlearn.studies.controlled import fq_ceiling, paired_tests

    res = _controlled(False, seeds=(0, 1, 2))
    shift = {"npo": [0.010, 0.011, 0.012], "wga": [0.02, 0.03, 0.04]}
    rand = {(r["method"], r["seed"]): r["aues"] for r in res["runs"] if r["region"] == "random"}
    for r in res["runs"]:
        if r["region"] == "oracle":
            r["aues"] = rand[(r["method"], r["seed"])] + shift[r["method"]][r["seed"]]
    res["tests"] = paired_tests(res["runs"], list(METHODS))
    res["fq_ceiling"] = fq_ceiling(40)
    res["positive_control"] = {"oracle_fs": [0.9, 0.95, 0.97], "random_fs": [0.7, 0.8, 0.75], "p": 0.012,
                               "mdd": 0.1, "detected": True, "test": {"n": 3, "mdd": 0.1, "sd_diff": 0.05}}
    tests = {(t["method"], t["metric"]): t for t in res["tests"]}
    # the premises of the checks below, from the stored numbers
    assert tests["npo", "aues"]["p_holm"] < 0.05
    assert tests["wga", "aues"]["p_t"] < 0.05 <= tests["wga", "aues"]["p_holm"]
    assert all(t["holm_m"] == 4 for t in res["tests"])
    return res, tests


def test_headline_shows_p_before_and_after_holm_and_the_limits(tmp_path):
    res, tests = _holm_study()
    md = build_report(_write(tmp_path, res))["md"].read_text()
    head = md.split("## Headline", 1)[1].split("\n## ", 1)[0]
    npo, wga = tests["npo", "aues"], tests["wga", "aues"]
    line = next(ln for ln in head.splitlines() if ln.startswith("- **npo**"))
    assert f"paired t p = {npo['p_t']:.3f}, Holm p = {npo['p_holm']:.3f} (4 tests): **significant** at 0.05 after Holm" in line
    line = next(ln for ln in head.splitlines() if ln.startswith("- **wga**"))
    assert f"paired t p = {wga['p_t']:.3f}, Holm p = {wga['p_holm']:.3f} (4 tests): p < 0.05 uncorrected, not after Holm;" in line
    assert "**significant**" not in line
    assert ("significant after Holm's correction over the study's 4 tests for 1 of 2 tested method(s); "
            "1 more at p < 0.05 uncorrected, not after Holm.") in head
    # the limits block comes after the existing headline lines
    lines = head.strip().splitlines()
    first = lines.index("- **Limits of this run** (docs/studies.md#limits-of-a-run):")
    assert first > max(i for i, ln in enumerate(lines) if ln.startswith(("- **npo**", "- **wga**", "- Positive control: FS")))
    limits = lines[first + 1:]
    assert limits[0] == ("- FQ ceiling: with 40 forget rows per side, the KS test behind FQ cannot give a log10 FQ below "
                         "-22.73 (truth ratios fully separated, D = 1; docs/metrics.md#fq-ceiling), and values near it "
                         "cannot tell models apart; the paper's MU95 values (-14.87 to -16.84) come from TOFU forget10's "
                         "400 rows (docs/metrics.md#paper-reference-values). theta_o starts at log10 FQ -5.00 (mean over "
                         "3 seed(s)).")
    assert limits[1].startswith("- Faithfulness (docs/studies.md#faithfulness): 1 of 6 criteria met (5 not recorded)")
    del limits[1]  # tests/test_report.py::test_faithfulness_criteria_met_and_not checks it
    assert limits[1] == ("- Injection: 1 of 3 seed(s) reached the target forget ES (forget ES 0.930 / 0.930 / 0.930 vs "
                         "target 0.850); theta_o holds less of the forget set than designed, so there is less to unlearn.")
    sig = [f"{m} {lab}" for k, lab in (("aues", "AUES"), ("mu95", "MU95")) for m in METHODS if tests[m, k]["p_holm"] < 0.05]
    unc = [f"{m} {lab}" for k, lab in (("aues", "AUES"), ("mu95", "MU95")) for m in METHODS
           if tests[m, k]["p_t"] < 0.05 <= tests[m, k]["p_holm"]]
    assert "npo AUES" in sig and "wga AUES" in unc
    assert limits[2] == ("- Tests: p (paired t) is uncorrected; p (Holm) is corrected over the study's 4 Oracle-vs-Random "
                         "tests (docs/statistics.md#multiple-comparisons). Significant after Holm: " + ", ".join(sig)
                         + "; p < 0.05 uncorrected, not after Holm: " + ", ".join(unc) + ".")
    assert limits[3] == (f"- AUES: npo p = {npo['p_t']:.3f}, Holm {npo['p_holm']:.3f}, MDD {npo['mdd']:.3f} (n=3, sd "
                         f"{npo['sd_diff']:.3f}); wga p = {wga['p_t']:.3f}, Holm {wga['p_holm']:.3f}, MDD {wga['mdd']:.3f} "
                         f"(n=3, sd {wga['sd_diff']:.3f}) (p < 0.05 uncorrected, not after Holm).")
    assert limits[4].startswith("- MU95: npo p = ")
    assert limits[5] == "- Positive control: detected (paired t p = 0.012; one pre-specified test, not corrected)."
    # the AUES table: p (Holm) beside p (paired t), and the uncorrected-only test named in its notes
    for m in METHODS:
        row = _row(md, m, "| method | AUES Oracle")
        assert row[6:8] == [f"{tests[m, 'aues']['p_t']:.3f}", f"{tests[m, 'aues']['p_holm']:.3f}"]
    assert "| p (paired t) | p (Holm) | p (Wilcoxon) |" in md
    assert "p < 0.05 uncorrected, not after Holm: wga." in md


def test_limits_block_names_an_undetected_positive_control(tmp_path):
    res, _ = _holm_study()
    res["positive_control"] |= {"detected": False, "p": 0.2}
    md = build_report(_write(tmp_path, res))["md"].read_text()
    assert ("- Positive control: **not detected** (paired t p = 0.200): this run cannot see a difference that exists "
            "by construction, so a null result above says nothing about the paper's question.") in md


def test_cli_summary_shows_both_p_and_the_limits(tmp_path, capsys):
    from loc_unlearn.commands.study import print_controlled_summary as print_summary

    res, tests = _holm_study()
    res["elapsed_s"] = 3.0
    print_summary(_write(tmp_path, res))
    out = capsys.readouterr().out.splitlines()
    head = next(i for i, ln in enumerate(out) if ln.startswith("method"))
    assert out[head].split() == ["method", "metric", "oracle", "random", "p(t)", "p(Holm)", "p(W)", "MDD", "(n,", "sd)"]
    for m in METHODS:
        for metric in ("aues", "mu95"):
            t = tests[m, metric]
            line = next(ln for ln in out if ln.split()[:2] == [m, metric])
            # after the two "mean ± sd" cells: p(t), then p(Holm)
            assert line.split()[8:10] == [f"{t['p_t']:.3f}", f"{t['p_holm']:.3f}"]
    start = out.index("Limits of this run (docs/studies.md#limits-of-a-run):")
    assert start > max(i for i, ln in enumerate(out) if ln.split()[:1] in (["npo"], ["wga"]))
    block = out[start + 1:start + 6]
    assert block[0].startswith("  FQ ceiling: with 40 forget rows per side") and "-22.73" in block[0]
    assert block.pop(1).startswith("  Faithfulness (docs/studies.md#faithfulness): 1 of 6 criteria met")
    assert block[1].startswith("  Injection: 1 of 3 seed(s) reached the target forget ES")
    assert block[2].startswith("  Tests: p (paired t) is uncorrected; p (Holm) is corrected over the study's 4")
    assert "p < 0.05 uncorrected, not after Holm: wga AUES" in block[2]
    assert block[3] == "  Positive control: detected (paired t p = 0.012; one pre-specified test, not corrected)."
    assert not any("**" in ln for ln in out[start:start + 6])


def test_cli_summary_of_an_old_results_file_says_n_a(tmp_path, capsys):
    from loc_unlearn.commands.study import print_controlled_summary as print_summary

    res = _controlled(False)  # tests without p_holm, no fq_ceiling, no positive control
    res["elapsed_s"] = 1.0
    print_summary(_write(tmp_path, res))
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("npo") and "aues" in ln)
    t = next(t for t in res["tests"] if t["method"] == "npo" and t["metric"] == "aues")
    assert line.split()[8:10] == [f"{t['p_t']:.3f}", "n/a"]  # after the two "mean ± sd" cells: p(t), p(Holm)
    assert "  FQ ceiling: not recorded in this results.json" in out
    assert "  Tests: the p-values are uncorrected; this results.json has no Holm-corrected p" in out


def test_robustness_section_reads_significance_from_holm(tmp_path):
    """With the robustness family's Holm-corrected p (as the controlled study stores it), the headline line,
    the tests table and the terminal table show it beside p (paired t), and only p (Holm) makes a test
    'significant'; a test below 0.05 only uncorrected says so."""
    from loc_unlearn.evaluate.stats import holm
    from loc_unlearn.report.robustness import cli_lines

    seeds = (0, 1, 2)
    res = _controlled(False, seeds=seeds)
    res["robustness"] = rob = _robustness("controlled", ("oracle", "random"), seeds, np.random.default_rng(3))
    ps = [0.001, 0.03] + [0.5] * (len(rob["tests"]) - 2)  # one survives Holm, one does not
    for t, p, ph in zip(rob["tests"], ps, holm(ps)):
        t.update(p_t=p, p_holm=ph, holm_m=len(ps))
    md = build_report(_write(tmp_path, res))["md"].read_text()
    rows = [r for r in md.splitlines() if r.startswith("| ") and "| p (Holm) |" not in r]
    first, second = rob["tests"][0], rob["tests"][1]
    assert holm(ps)[0] < 0.05 <= holm(ps)[1]
    for t, verdict in ((first, "significant at 0.05 after Holm"), (second, "p < 0.05 uncorrected, not after Holm")):
        cells = next(r for r in rows if f"| {t['method']} |" in r and f"| {t['p_t']:.3f} | {t['p_holm']:.3f} |" in r)
        assert cells.rstrip(" |").endswith(verdict), cells
    head = next(ln for ln in cli_lines(res) if "p(Holm)" in ln)
    assert head.index("p(t)") < head.index("p(Holm)")


def test_faithfulness_criteria_met_and_not(tmp_path):
    """Each faithfulness criterion (docs/studies.md#faithfulness) is judged from results.json's numbers: a
    run that meets all five says 5 of 5; one with a weak injection and a norm signature says which two fail;
    a results.json without the entries says they were not recorded."""
    from loc_unlearn.report.tables import faithfulness, faithfulness_line

    res, _ = _holm_study()
    start = {r["seed"]: r["trajectory"][0] for r in res["runs"]}
    for pt in start.values():
        pt["log10_FQ"] = -5.0
    res["theta_r"] = {"forget_es": 0.05, "retain_es": 0.99, "MU": 0.6, "MU_sets": ["retain", "general"]}
    res["fq_ceiling"]["practical"] = {"ks_d": 0.6, "log10_fq": -9.0, "n_unseen": 40, "n_seen": 40,
                                      "rows_for_minus_8": 60}
    res["injection"] = [{"seed": s, "forget_es": 0.95, "target_es": 0.9, "reached": True, "norm_ratio": 1.2}
                        for s in (0, 1, 2)]
    for r in res["runs"]:
        r["trajectory"][0]["RS"] = 0.95  # theta_o keeps the retain set (>= 0.9 x 0.99)
    assert [ok for _, ok in faithfulness(res)] == [True] * 6
    assert faithfulness_line(res).startswith("Faithfulness (docs/studies.md#faithfulness): 6 of 6 criteria met")
    res["injection"][1] |= {"forget_es": 0.30, "norm_ratio": 1.7}
    for pt in start.values():
        pt["log10_FQ"] = -4.0  # less than half of -9
    for r in res["runs"]:
        if r["seed"] == 0:  # one seed's theta_o (every run of that seed starts from it) lost part of the retain set
            r["trajectory"][0]["RS"] = 0.80
    got = faithfulness(res)
    assert [ok for _, ok in got] == [True, True, False, False, False, False]
    assert "0.300..0.950" in got[2][0] and "1.70" in got[3][0] and "0.800" in got[4][0]
    md = build_report(_write(tmp_path, res))["md"].read_text()
    assert "2 of 6 criteria met" in md and "Practical FQ ceiling" in md and "-9.00" in md
    del res["theta_r"], res["fq_ceiling"]["practical"]
    assert "(4 not recorded)" in faithfulness_line(res)
