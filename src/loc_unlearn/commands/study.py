"""The study commands (the studies themselves are in studies/) and `report`."""
from __future__ import annotations

import json
import time
from pathlib import Path

from . import PIPELINE, command

STUDY = PIPELINE + ("inject", "unlearn", "localize", "study")


@command("study controlled", "Oracle vs Random: the paper's causal test (docs/studies.md)", STUDY,
         {"seeds": "study.seeds", "methods": "study.methods"})
def study_controlled(cfg) -> None:
    from ..studies import controlled
    from ..studies.common import run_study

    d = run_study(cfg, controlled.design(cfg))
    print_controlled_summary(d)
    _print_paths(d)


@command("demo", "the controlled study on the tiny preset + output fit + report", STUDY,
         {"seeds": "study.seeds", "methods": "study.methods"})
def demo(cfg) -> None:
    from ..utils import log

    log(f"demo: controlled study on preset {cfg.preset} ({cfg.study.seeds} seeds x {', '.join(cfg.study.methods)} "
        f"x oracle/random), output-fit analysis, report; runs in {cfg.runs_dir}/")
    t0 = time.time()
    study_controlled(cfg)
    print(f"demo finished in {time.time() - t0:.0f} s")


@command("study localization", "localization methods vs random (docs/studies.md, Table 1)",
         PIPELINE + ("unlearn", "localize", "study"), {"methods": "study.methods", "localizers": "study.localizers"})
def study_localization(cfg) -> None:
    from ..report.robustness import cli_lines as robustness_cli
    from ..studies import localization_benchmark as lb
    from ..studies.common import run_study

    d = run_study(cfg, lb.design(cfg))
    res = json.loads((d / "results.json").read_text())
    methods = cfg.study.methods
    print(f"\n{'localizer':18s} " + " ".join(f"{m + ' AUES':>10s} {m + ' MU95':>10s}" for m in methods))
    for loc in lb.localizers(cfg):
        cells = []
        for m in methods:
            r = next(x for x in res["runs"] if x["localizer"] == loc and x["method"] == m)
            cells.append(f"{r['aues']:10.3f} {r['mu95']:10.2f}")
        print(f"{loc:18s} " + " ".join(cells))
    print("\n".join(robustness_cli(res)))
    _print_paths(d)


@command("study output_fit", "per-layer output reproduction (docs/studies.md)", PIPELINE + ("inject", "study"))
def study_output_fit(cfg) -> None:
    """theta_r -> theta_o (seed inject.seed) -> the per-layer fit of the random region (stages.output_fit)."""
    from .. import stages

    data = stages.data_source(cfg)
    theta_r = stages.retain_model(cfg, data)
    res = stages.output_fit(cfg, data, theta_r, stages.prepare_seed(cfg, data, theta_r, cfg.inject.seed))
    print(f"{'layer':>5} {'|R|':>6} {'tokens':>7} {'residual':>9}")
    for row in res["per_layer"]:
        print(f"{row['layer']:>5} {row['k']:>6} {row['n_tokens']:>7} {row['residual']:>9.3f}")
    for name in ("theta_r", "theta_o", "stitched"):
        print(f"{name:9s} FS {res[name]['FS']:.3f}  RS {res[name]['RS']:.3f}")


@command("report", "rebuild the report of a study run dir: report RUN_DIR", (), positional="RUN_DIR")
def report(cfg, run_dir: str | None = None) -> dict:
    """`loc-unlearn report RUN_DIR`: rebuild the report of a study run directory from its results.json."""
    from ..errors import UserError
    from ..report import build_report
    from ..utils import log

    if not run_dir:
        raise UserError(report_usage(cfg))
    d = Path(run_dir)
    if not d.exists() and (Path(cfg.runs_dir) / run_dir).is_dir():
        d = Path(cfg.runs_dir) / run_dir  # a bare run name, relative to runs_dir
    out = build_report(d)
    log(f"report of {d}: {len(out['plots'])} plots")
    print(f"report: {out['html']}\n        {out['md']}")
    return out


def report_usage(cfg) -> str:
    # Study run dirs are runs_dir/study-<name>/<hash>/ (runs.get_run); name the ones that exist.
    found = sorted(str(p.parent) for p in Path(cfg.runs_dir).glob("study-*/*/results.json"))
    hint = ("; study runs in " + cfg.runs_dir + ": " + ", ".join(found[:5])) if found else ""
    return f"report needs a study run directory: loc-unlearn report {cfg.runs_dir}/study-controlled/<hash>{hint}"


def _print_paths(d: Path) -> None:
    print(f"\nreport: {d / 'report.html'}\n        {d / 'report.md'}\nresults: {d / 'results.json'}")


def print_controlled_summary(study_dir: Path) -> None:
    """The controlled study's results on the terminal: the Oracle-vs-Random table, injection, localization
    check, positive control and output fit (the report's numbers, plain text)."""
    from ..report import cli_summary
    from ..report.tables import positive_control_line

    res = json.loads((study_dir / "results.json").read_text())
    print("\n" + "\n".join(cli_summary(res)))
    for inj in res["injection"]:
        print(f"injection seed {inj['seed']}: forget ES {inj['forget_es']:.3f} (target {inj['target_es']:.3f}, "
              f"{'reached' if inj['reached'] else 'NOT reached'})")
    if "localization_check" in res:
        print("localization precision at recovering V_tgt (random expects "
              f"{res['ratio']:.2f}): " + ", ".join(f"{r['method']}{'' if r.get('scope', 'global') == 'global' else '@' + r['scope']} "
                                              f"{r['precision']:.2f}" for r in res["localization_check"]))
    if "positive_control" in res:
        print(positive_control_line(res["positive_control"]))
    if "output_fit" in res:
        of = res["output_fit"]
        print(f"output fit: stitched FS {of['stitched']['FS']:.3f} RS {of['stitched']['RS']:.3f} "
              f"(theta_o FS {of['theta_o']['FS']:.3f}, theta_r FS {of['theta_r']['FS']:.3f})")
    print(f"elapsed {res['elapsed_s']:.0f} s (first run)")
