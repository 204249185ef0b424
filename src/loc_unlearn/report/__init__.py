"""Study reports: `build_report(study_dir)` turns a study's results.json into report.html (one
self-contained file) and report.md (+ plots/*.png). `loc-unlearn report RUN_DIR` rebuilds them (commands/study.py).

The headline comes first: for each unlearning method, Oracle vs Random AUES with the paired-t p-value
before and after Holm's correction (docs/studies.md#step-4-comparison, docs/statistics.md#multiple-comparisons)
and the limits of the run (docs/studies.md#limits-of-a-run); for the localization benchmark, each localizer
against the random mask (docs/studies.md#localization-benchmark).
Optional parts of results.json (localization_check, output_fit, masks, trajectories) are skipped
when absent; unknown extra fields are ignored.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..utils import atomic_write, write_text_atomic
from . import plots, robustness, setup, tables
from .common import REGIONS, by_seed, fmt, fmt_mdd, fmt_ms, fmt_p, isnum, methods_of, paired
from .render import Plot, to_html, to_markdown

STUDIES = ("controlled", "localization")
_NUM = (int, float)


def _need(obj: dict, key: str, types, where: str, path: Path):
    if not isinstance(obj, dict) or key not in obj:
        raise UserError(f"{path}: {where} lacks field {key!r} (see the results.json schema in docs/contracts.md)")
    v = obj[key]
    tt = types if isinstance(types, tuple) else (types,)
    if not isinstance(v, tt) or (isinstance(v, bool) and bool not in tt):  # JSON true is not a number here
        want = " or ".join(t.__name__ for t in tt)
        raise UserError(f"{path}: {where}.{key} should be {want}, got {type(v).__name__} {v!r:.60}")
    return v


def _list_of_dicts(res: dict, key: str, path: Path, required: bool) -> list:
    if key not in res and not required:
        return []
    v = _need(res, key, list, "results", path)
    for i, r in enumerate(v):
        if not isinstance(r, dict):
            raise UserError(f"{path}: {key}[{i}] should be an object, got {type(r).__name__}")
    return v


def load_results(study_dir: str | Path) -> dict:
    """Read and validate study_dir/results.json; every problem is a UserError naming the file and field."""
    d = Path(study_dir)
    if not d.is_dir():
        raise UserError(f"report: {d} is not a directory; expected a study run directory holding results.json "
                        "(written by `loc-unlearn study controlled|localization` or `demo`)")
    path = d / "results.json"
    if not path.is_file():
        raise UserError(f"report: {path} not found; expected the study's results.json in {d}")
    try:
        res = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(res, dict):
        raise UserError(f"{path}: expected a JSON object at the top level, got {type(res).__name__}")
    study = _need(res, "study", str, "results", path)
    if study not in STUDIES:
        raise UserError(f"{path}: results.study is {study!r}; expected one of {', '.join(STUDIES)}")
    runs = _list_of_dicts(res, "runs", path, required=True)
    if not runs:
        raise UserError(f"{path}: results.runs is empty; expected one entry per unlearning run")
    group = "region" if study == "controlled" else "localizer"
    for i, r in enumerate(runs):
        w = f"runs[{i}]"
        _need(r, "method", str, w, path)
        _need(r, group, str, w, path)
        if study == "controlled":
            _need(r, "seed", int, w, path)
            if r["region"] not in REGIONS:
                raise UserError(f"{path}: {w}.region is {r['region']!r}; expected 'oracle' or 'random'")
        _need(r, "aues", _NUM, w, path)
        _need(r, "mu95", _NUM, w, path)
        for j, p in enumerate(r.get("trajectory") or []):
            _need(p, "FS", _NUM, f"{w}.trajectory[{j}]", path)
            _need(p, "RS", _NUM, f"{w}.trajectory[{j}]", path)
    for i, m in enumerate(_list_of_dicts(res, "masks", path, required=False)):
        _need(m, "per_layer_counts", list, f"masks[{i}]", path)
        _need(m, "name" if study == "controlled" else "localizer", str, f"masks[{i}]", path)
    for i, r in enumerate(_list_of_dicts(res, "injection", path, required=False)):
        _need(r, "forget_es", _NUM, f"injection[{i}]", path)
    for i, r in enumerate(_list_of_dicts(res, "localization_check", path, required=False)):
        _need(r, "method", str, f"localization_check[{i}]", path)
        _need(r, "precision", _NUM, f"localization_check[{i}]", path)
        _need(r, "recall", _NUM, f"localization_check[{i}]", path)
    _list_of_dicts(res, "tests", path, required=False)
    if "robustness" in res:
        _check_robustness(res, path)
    if "setup" in res:
        _need(res, "setup", dict, "results", path)
    if "output_fit" in res:
        of = _need(res, "output_fit", dict, "results", path)
        for i, r in enumerate(of.get("per_layer") or []):
            _need(r, "layer", int, f"output_fit.per_layer[{i}]", path)
            _need(r, "residual", _NUM, f"output_fit.per_layer[{i}]", path)
    return res


def _check_robustness(res: dict, path: Path) -> None:
    """results.json `robustness` (studies/robustness.py): settings, metrics, runs, references, tests."""
    rob = _need(res, "robustness", dict, "results", path)
    _need(rob, "settings", dict, "robustness", path)
    for i, m in enumerate(_list_of_dicts(rob, "metrics", path, required=True)):
        _need(m, "metric", str, f"robustness.metrics[{i}]", path)
        _need(m, "kind", str, f"robustness.metrics[{i}]", path)
    group = "region" if res["study"] == "controlled" else "localizer"
    for i, r in enumerate(_list_of_dicts(rob, "runs", path, required=True)):
        for k in ("method", group, "checkpoint"):
            _need(r, k, str, f"robustness.runs[{i}]", path)
    for i, r in enumerate(_list_of_dicts(rob, "references", path, required=False)):
        _need(r, "model", str, f"robustness.references[{i}]", path)
    _list_of_dicts(rob, "tests", path, required=False)


def _plot(fig, name: str, caption: str, made: list) -> list:
    """A one-element block list with the rendered figure (empty when the figure's data is absent)."""
    if fig is None:
        return []
    p = Plot(name, caption, plots.png(fig))
    made.append(p)
    return [p]


def _setup_section(res: dict) -> list[tuple[str, list]]:
    t = setup.setup_table(res)
    return [("Setup", [t])] if t else []


def _full_at_note(res: dict) -> str:
    """eval.full_at=ends: say that MU95 comes from the trajectories' end points only."""
    pts = [p for r in res.get("runs") or [] for p in r.get("trajectory") or []]
    if not any(p.get("es_only") for p in pts):
        return ""
    return (" Only theta_0 and the final checkpoint of each run had the full evaluation (eval.full_at=ends): the "
            "points between have FS/RS alone, so AUES uses every point and MU95 only the two end points.")


def controlled_sections(res: dict, made: list) -> list[tuple[str, list]]:
    s = [("AUES: Oracle vs Random", [
            tables.comparison_table(res, "aues"),
            *_plot(plots.aues_bars(res), "aues_oracle_vs_random.png",
                   "AUES per method: Oracle (injected region) vs Random (disjoint region), error bars = std over "
                   "seeds; right: their difference with its 95% t interval, the paired-t p and the minimum detectable "
                   "difference (no bars for one seed).",
                   made)]),
         ("MU95: Oracle vs Random", [tables.comparison_table(res, "mu95"),
                                     "MU95 = log10 FQ where MU first drops below 95% of its start (higher is better)."
                                     + _full_at_note(res)]),
         *[(f"{m['label']}: Oracle vs Random", [tables.comparison_table(res, m["name"]), tables.metric_note(m)])
           for m in res.get("metrics") or []],
         ("Trajectories", _plot(plots.trajectories(res), "trajectories.png",
                                "RS vs FS along each unlearning run; one line per seed.", made))]
    if res.get("injection"):
        s.insert(0, ("Injection (theta_r -> theta_o)", [tables.injection_table(res)]))
    if res.get("masks") or res.get("localization_check"):
        s.append(("Mask distribution", _plot(plots.mask_layers(res), "mask_layers.png",
                                             "Value vectors per layer in each mask (seed 0).", made)))
    if res.get("localization_check"):
        s.append(("Localization check", [
            "Can localization methods find the region V_tgt the facts were injected into? (docs/studies.md#step-5-localization-check)",
            tables.localization_check_table(res),
            *_plot(plots.localization_check(res), "localization_check.png",
                   "Precision / recall at recovering V_tgt; dashed: what a random mask gets on average.", made)]))
    if res.get("output_fit"):
        s.append(("Output reproduction (docs/studies.md#output-fit)", [
            *_plot(plots.output_fit_residuals(res), "output_fit_residual.png",
                   "Per-layer relative residual of fitting a random region to the injected output change.", made),
            *tables.output_fit_tables(res)]))
    s += robustness.sections(res, lambda fig, name, cap: _plot(fig, name, cap, made))
    s.append(("Glossary", setup.glossary(res)))
    s.append(("Per-run values", [tables.runs_table(res)]))
    return _setup_section(res) + s


def localization_sections(res: dict, made: list) -> list[tuple[str, list]]:
    s = [("AUES and MU95 per localizer", [tables.localization_table(res)]),
         *[(f"{m['label']} per localizer", [tables.localization_metric_table(res, m), tables.metric_note(m)])
           for m in res.get("metrics") or []],
         ("Trajectories", _plot(plots.trajectories(res), "trajectories.png",
                                "RS vs FS along each unlearning run; one colour per localizer.", made))]
    if res.get("masks"):
        s.append(("Mask distribution", _plot(plots.mask_layers(res), "mask_layers.png",
                                             "Value vectors per layer in each localizer's mask.", made)))
    s += robustness.sections(res, lambda fig, name, cap: _plot(fig, name, cap, made))
    s.append(("Glossary", setup.glossary(res)))
    s.append(("Per-run values", [tables.runs_table(res)]))
    return _setup_section(res) + s


def build_report(study_dir: str | Path) -> dict:
    """Write study_dir/report.html, report.md and plots/*.png; returns dict(html, md, plots) paths."""
    d = Path(study_dir)
    res = load_results(d)
    made: list[Plot] = []
    if res["study"] == "controlled":
        title, headline, sections = "Controlled study: Oracle vs Random", tables.controlled_headline(res), controlled_sections(res, made)
    else:
        title, headline, sections = "Localization benchmark", tables.localization_headline(res), localization_sections(res, made)
    headline += [f"Robustness: {line}" for line in robustness.headline(res)]
    sections = [(name, blocks) for name, blocks in sections if blocks]
    meta = " · ".join(x for x in (
        f"preset `{res['preset']}`" if res.get("preset") else "",
        f"mask ratio {fmt(res['ratio'], 2)}" if isnum(res.get("ratio")) else "",
        f"created {res['created']}" if res.get("created") else "",
        f"elapsed {res['elapsed_s']:.0f} s" if isnum(res.get("elapsed_s")) else "",
        f"results: `{d / 'results.json'}`") if x)
    plot_dir = d / "plots"
    for old in plot_dir.glob("*.png") if plot_dir.is_dir() else []:
        old.unlink()  # a rebuild must not leave plots of sections that are gone
    paths = []
    for p in made:
        out = plot_dir / p.name
        out.parent.mkdir(parents=True, exist_ok=True)
        paths.append(out)
        atomic_write(out, lambda t, data=p.data: Path(t).write_bytes(data))
    config = json.dumps(res["config"], indent=2, sort_keys=True, default=str) if "config" in res else ""
    md = write_text_atomic(d / "report.md", to_markdown(title, meta, headline, sections))
    htm = write_text_atomic(d / "report.html", to_html(title, meta, headline, sections, config))
    for f in [md, htm, *paths]:
        f.chmod(0o644)  # atomic_write's temp files are private (0600); a report is meant to be shared
    return {"html": htm, "md": md, "plots": paths}


def extra_metric_names(res: dict) -> list[str]:
    """The extra metrics (eval.metrics) a study declared in results.json `metrics`."""
    return [m["name"] for m in res.get("metrics") or []]


def cli_summary(res: dict) -> list[str]:
    """Plain-text Oracle-vs-Random table for the terminal (the report's numbers, no Markdown), p(t) beside
    p(Holm) (docs/statistics.md#multiple-comparisons), then the limits of the run (tables.limits_lines). One
    seed: means without ±, tests as "n/a (1 seed)"."""
    runs = res["runs"]
    n_seeds = len({r["seed"] for r in runs})
    lines = [f"Oracle vs Random ({n_seeds} seed{'s' if n_seeds != 1 else ''}, preset {res.get('preset') or 'n/a'}):",
             f"{'method':8s} {'metric':6s} {'oracle':>16s} {'random':>16s} {'p(t)':>13s} {'p(Holm)':>13s} {'p(W)':>13s}"
             "  MDD (n, sd)"]
    censored = []
    for m in methods_of(runs):
        for metric in ("aues", "mu95", *extra_metric_names(res)):
            nd = 2 if metric == "mu95" else 3
            t = paired(res, m, metric)
            cells = [fmt_ms(list(by_seed(runs, m, reg, metric).values()), nd) for reg in REGIONS]
            n = t.get("n")
            lines.append(f"{m:8s} {metric:6s} {cells[0]:>16s} {cells[1]:>16s} {fmt_p(t.get('p_t'), n):>13s} "
                         f"{fmt_p(t.get('p_holm'), n):>13s} {fmt_p(t.get('p_wilcoxon'), n):>13s}  {fmt_mdd(t, nd)}")
            nc = t.get("n_censored")
            if isinstance(nc, dict) and any(nc.values()):
                censored.append(f"{m} " + ", ".join(f"{g} {c}/{n}" for g, c in nc.items()))
    if censored:
        lines.append("MU95 censored (MU never fell below 0.95 MU0; tests treat the last value as observed): "
                     + "; ".join(censored))
    limits = [ln.replace("**", "") for ln in tables.limits_lines(res, per_test=False)]
    lines += [limits[0]] + [f"  {ln}" for ln in limits[1:]]
    return lines + robustness.cli_lines(res)
