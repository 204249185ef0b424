#!/usr/bin/env python3
"""Point every citation of the project's old, external definitions file at the reference pages in docs/.

Docstrings, comments, the README and the report used to cite a definitions file kept outside the
repository by section number ("<tag> §7 step 3", "(<tag> §2)", "<tag> preamble", ...), and a few lines
named two other files kept next to it. The definitions now live in docs/*.md; this script rewrites each
such citation into a short in-repository one, e.g. "(docs/metrics.md#extraction-strength-es)", using the
mapping tables below, so that nothing the repository tracks refers to a file outside it.

    python tools/cite_docs.py --dry-run      # what would change: per file, per page, and each line
    python tools/cite_docs.py                # rewrite the files in place
    python tools/cite_docs.py --check        # exit 1 if an old citation / outside reference remains,
                                             # or a docs/<page>.md#<anchor> link has no such heading

Options: --root DIR (the repository; default: this file's parent's parent), --tracked-only (skip
untracked files that git does not ignore; by default they are included so that files a restructure has
not added yet are covered), --quiet (no per-line listing in --dry-run).

How a citation is mapped (the tables, in this order):
1. PHRASES: whole wordings that need their sentence rewritten, not just the pointer replaced (the old
   "cite as ..." instructions, identifiers, headings the tests compare, compound pointers).
2. FIXED: pointers that name their target outright (a step of the controlled study, a quoted subsection).
3. SECTIONS: for a bare section number, the first keyword rule that matches the sentence *before* the
   citation wins (the rest of the sentence after it when the citation opens the sentence), else the
   section's default page#anchor.
The rewrite is idempotent: its output contains none of the forms it rewrites. Python files whose
rewritten text no longer compiles are reported and left unchanged.

The old tag and the neighbouring file names are spelled apart in this file (`TAG`, `ARCH`, `ENV`),
so that `git grep` for them finds nothing here either.
"""
from __future__ import annotations

import argparse
import collections
import difflib
import re
import subprocess
import sys
from pathlib import Path

TAG = "SP" "EC"  # the old citation tag
ARCH = "DES" "IGN"  # the architecture notes kept next to it
ENV = "ENVIRON" "MENT"  # the environment notes kept next to it
SHARED = r"\.\./shared"  # where those three files were, seen from the repository
SEC = "\u00a7"  # the section sign

SELF = "tools/cite_docs.py"
LONG = 120  # rewritten lines longer than this are listed (the code base has no enforced limit)

# ----------------------------------------------------------------------------- targets
PAGES = "docs/README.md"
DATA, METRICS, OBJ, LOC, STUDIES, STATS, ATTACKS = (f"docs/{p}.md" for p in (
    "data", "metrics", "objectives", "localizers", "studies", "statistics", "attacks"))
ES = f"{METRICS}#extraction-strength-es"
FSRS = f"{METRICS}#forget-and-retain-scores-fs-rs"
FQ = f"{METRICS}#forget-quality-fq"
MU = f"{METRICS}#model-utility-mu"
TRUTH = f"{METRICS}#truth-ratio"
ROUGE = f"{METRICS}#rouge-l-recall"
TRAJ = f"{METRICS}#trajectory"
MIX = f"{METRICS}#mix-curve"
AUES = f"{METRICS}#aues"
MU95 = f"{METRICS}#mu95"
LAYOUT = f"{DATA}#tofu-layout"
SPLITS = f"{DATA}#forget-and-retain-splits"
EVALSETS = f"{DATA}#evaluation-sets"
FORMAT = f"{DATA}#prompt-and-answer-formatting"
IDK = f"{DATA}#idk-refusals"
WORLD = f"{DATA}#synthetic-author-world"
VV = f"{LOC}#value-vectors"
APPLY = f"{LOC}#applying-a-mask"
MASKFILES = f"{LOC}#mask-files"
TOPK = f"{LOC}#top-k-selection"
CONTROLLED = f"{STUDIES}#controlled-study"
STEP = {1: f"{STUDIES}#step-1-retain-model", 2: f"{STUDIES}#step-2-injection",
        3: f"{STUDIES}#step-3-oracle-and-random", 4: f"{STUDIES}#step-4-comparison",
        5: f"{STUDIES}#step-5-localization-check"}
POSCTRL = f"{STUDIES}#positive-control"
SETTINGS = f"{STUDIES}#paper-settings"
BENCH = f"{STUDIES}#localization-benchmark"
OUTFIT = f"{STUDIES}#output-fit"
MODELS = f"{STUDIES}#models"
PAIRING = f"{STATS}#pairing"
BOOT = f"{STATS}#bootstrap-interval"
MDD = f"{STATS}#minimum-detectable-difference-mdd"
CENSOR = f"{STATS}#censoring"
RELEARN = f"{ATTACKS}#relearning-attack"
RECOVERY = f"{ATTACKS}#recovery-rk"
QUANT = f"{ATTACKS}#quantization-attack"
IN_STUDIES = f"{ATTACKS}#attacks-in-the-studies"

# ----------------------------------------------------------------------------- 1. PHRASES
# (regex, replacement), applied first and in order. `{T}` is the tag, `{S}` the section sign, `{D}` / `{E}` the
# neighbouring files' names, `{SH}` their folder (as a regex).
_PHRASES = [
    # the old instructions on where definitions live and how to cite them
    (r"Definitions are in `{SH}/{T}\.md` \(cite as \"{T} {S}n\"\), architecture in `{SH}/{D}\.md`\.",
     'Definitions are in the reference pages under `docs/` (index `docs/README.md`; cite an entry as\n'
     '"docs/<page>.md#<anchor>"); the package layout is in `README.md`.'),
    (r"Definitions live in shared {T}\.md \(cited as \"{T} {S}n\"\); architecture in {D}\.md and docs/contracts\.md\.",
     'Definitions live in docs/ (index docs/README.md; cited as "docs/<page>.md#<anchor>"); interfaces in '
     'docs/contracts.md.'),
    (r"Definitions are in {T}\.md;", "Definitions are in docs/ (index docs/README.md);"),
    (r"\({T} sections cited per field\)", "(the docs/ entry cited per field)"),
    (r"Definitions follow the project's {T} \(cited as \"{T} {S}n\" in docstrings\)\.",
     "Definitions, with their formulas, sources and where the project departs from them, are in "
     "[docs/](docs/README.md) (cited as `docs/<page>.md#<anchor>` in docstrings)."),
    # sentences that mention the tag without a section
    (r"# {T} {S}5 defaults\. gamma/alpha not fixed by the {T} follow",
     "# Defaults (docs/objectives.md#defaults). gamma/alpha not fixed by a method's paper follow"),
    (r"written from the {T} formulas", "written from the formulas of docs/objectives.md"),
    # an identifier that contains the tag: the Makefile variable naming torch's pip requirement
    (r"\bTORCH_{T}\b", "TORCH_REQ"),
    # report headings and lines that tests compare verbatim: one replacement for src and tests alike
    (r"Robustness \({T} {S}10\b", f"Robustness ({ATTACKS}"),
    # possessives and pointers followed by a qualifier word
    (r"{T} {S}7's settings", f"the settings of {SETTINGS}"),
    (r"{T} {S}4's MU95", f"MU95 ({MU95})"),
    (r"{T} {S}10's 'from an unlearned model'", f"the 'from an unlearned model' of {RELEARN}"),
    (r"{T} {S}7 settings:", f"Paper settings ({SETTINGS}):"),
    (r"{T} {S}7 fidelity:", f"Injection fidelity ({STEP[2]}):"),
    (r"{T} {S}7 as written", f"as in {STEP[1]}"),
    (r"{T} {S}6 mask metadata", f"mask metadata, {MASKFILES}"),
    (r"{T} {S}4 option curve=mix:", f"Option curve=mix ({MIX}):"),
    (r"{T} {S}4 option:", f"Option curve=mix ({MIX}):"),
    (r"{T} {S}4, curve=mix", MIX),
    (r"{T} {S}2 by generation", f"ES ({ES}) by generation"),
    (r"Cached {T} {S}9 analysis", f"Cached output-fit analysis ({OUTFIT})"),
    (r"{T} {S}10 attacks on every unlearned model \(config",
     f"attacks on every unlearned model ({IN_STUDIES}, config"),
    (r"# {T} {S}10 on every unlearned model", f"# attacks ({IN_STUDIES}) on every unlearned model"),
    (r"The bootstrap keeps its keys for {T} {S}7 and older results",
     f"The bootstrap keeps its keys for the study design ({STEP[4]}) and older results"),
    # compound pointers
    (r"{T} {S}7 step 4, {S}10", f"{PAIRING}"),
    (r"{T} {S}7 step 4, {S}11", f"{STATS}"),
    (r"{T} {S}10, as {S}7", f"{PAIRING}"),
    (r"{T} {S}5, {S}6 \"Applying a mask\", {S}7 steps 1-3", f"{OBJ}#training-recipe, {APPLY}"),
    (r"{T} {S}2, {S}3", METRICS),
    (r"{T} {S}6/{S}7", f"{LOC}#random-complement"),
    (r" \({T} {S}1, {D} \"The offline\n(\s*)author world\"\)", rf"\n\1({WORLD})"),
    # the neighbouring files
    (r"Targets from {D}\.md\.", "Each section names the target it was measured against."),
    (r"\({D}\.md performance targets\)", "(target and results: benchmarks/RESULTS.md)"),
    (r"\({D} \"Presets\"; {E} \"SmolLM2 offline\"\)", "(presets: README.md#commands; SmolLM2 offline: "
     "README.md#running-the-papers-experiments)"),
    (r"wheel \({E}\.md\)", "wheel (README.md#running-the-papers-experiments)"),
    (r"\({D} \"Runs, artifacts, resume\"\)", "(README.md#where-results-go)"),
    (r"Data flows one way \({D}\):", f"Data flows one way ({MODELS}):"),
    (r"\"frozen\" weights, see {E}\.md\)", f"\"frozen\" weights, see {APPLY})"),
    (r" \({E}\.md\)\.", "."),  # Makefile comment: the reason is stated in the sentence itself
    (r"mpirun\n(#\s*)\({E}\.md\), so", r"mpirun,\n\1so"),  # configs/accelerate/cpu_2proc.yaml
]
PHRASES = [(re.compile(p.format(T=TAG, S=SEC, D=ARCH, E=ENV, SH=SHARED)), r) for p, r in _PHRASES]

# ----------------------------------------------------------------------------- 2. FIXED
# A pointer after the tag: "preamble", or a section with an optional step and quoted subsection.
CITE = re.compile(TAG + r" (?P<body>preamble|" + SEC + r"(?P<sec>\d+)(?P<range>-\d+)?"
                  r"(?: (?P<step>steps? \d+(?:-\d+)?))?(?: \"(?P<quote>Applying a mask|further methods)\")?)")

FIXED = {
    "step 1": STEP[1], "step 2": STEP[2], "step 3": STEP[3], "step 4": STEP[4], "step 5": STEP[5],
    "steps 1-3": f"{OBJ}#training-recipe", "steps 2-3": CONTROLLED,
    "Applying a mask": APPLY, "further methods": f"{LOC}#norm",
    "2-3": METRICS, "2-4": METRICS, "4-5": OBJ,
}

# ----------------------------------------------------------------------------- 3. SECTIONS
# section -> (default target, [(keyword regex, target), ...]); the first rule matching the sentence before
# the citation wins (the sentence after it when the citation opens the sentence), else the default.
SECTIONS = {
    "preamble": (FORMAT, [(r"(?i)value[-_ ]vectors?", VV)]),
    1: (LAYOUT, [(r"retain99|forget01 ->", SPLITS)]),
    2: (ES, [(r"\bFS\b|\bRS\b|(?i:forget score|retain score)", FSRS)]),
    3: (METRICS, [(r"per-set number", METRICS),
                  (r"Forget Quality|\bFQ\b|\bKS\b", FQ),
                  (r"Model Utility|(?i:harmonic)|\bMU\b", MU),
                  (r"(?i)truth ratio|P_pert", TRUTH),
                  (r"ROUGE", ROUGE),
                  (r"forget/retain data", DATA),
                  (r"(?i)eval(uation)? sets?\b|whole sets", EVALSETS)]),
    4: (TRAJ, [(r"(?i)trade-off summaries|AUES / MU95", METRICS),
               (r"(?i)\bmix|theta\(a\)", MIX),
               (r"(?i)censor", CENSOR),
               (r"MU95|0\.95", MU95),
               (r"AUES|(?i:area under|non-dominated|envelope)", AUES),
               (r"(?i)trajector|checkpoint", TRAJ)]),
    5: (OBJ, [(r"graddiff \|", OBJ),
              (r"(?i)refusals", IDK),
              (r"(?i)\brmu\b|layer 7", f"{OBJ}#rmu"),
              (r"(?i)\bdpo\b", f"{OBJ}#dpo"),
              (r"learn_reg|lambda", f"{OBJ}#injection-loss-learn_reg"),
              (r"logpi|log-probs|(?i:reference)", f"{OBJ}#reference-model"),
              (r"(?i)forget loss|method's default", f"{OBJ}#defaults")]),
    6: (LOC, [(r"(?i)masks over value vectors|random \| random_complement|localization methods", LOC),
              (r"(?i)a mask over value vectors", f"{LOC}#masks"),
              (r"(?i)nothing outside the mask|applying", APPLY),
              (r"round\(|keep the top", TOPK),
              (r"(?i)metadata|safetensors|mask file", MASKFILES),
              (r"(?i)activation", f"{LOC}#activation"),
              (r"(?i)memflex", f"{LOC}#memflex"),
              (r"(?i)wagle", f"{LOC}#wagle"),
              (r"(?i)gradient localization", f"{LOC}#gradient"),
              (r"(?i)random baselines", f"{LOC}#random")]),
    7: (CONTROLLED, [(r"(?i)causal test|controlled\.py", CONTROLLED),
                     (r"(?i)bootstrap|resampled", BOOT),
                     (r"(?i)paired over seeds|diff = oracle", PAIRING),
                     (r"(?i)inject", STEP[2]),
                     (r"(?i)two masks|random region", STEP[3]),
                     (r"(?i)oracle vs random", STEP[4])]),
    8: (BENCH, []),
    9: (OUTFIT, []),
    10: (ATTACKS, [(r"(?i)\bstud(y|ies)\b|every unlearned model|MU95 checkpoint", IN_STUDIES),
                   (r"R\(k\)|(?i:recovery|nothing back)", RECOVERY),
                   (r"(?i)quantiz|\bRTN\b|round-to-nearest", QUANT),
                   (r"(?i)relearn", RELEARN)]),
    11: (MDD, [(r"(?i)positive[ _]control|must exist|controls\.py", POSCTRL)]),
}
SECTIONS = {k: (d, [(re.compile(p), t) for p, t in rules]) for k, (d, rules) in SECTIONS.items()}

# A sentence ends at ". ", a docstring quote, a blank line, a bullet, a comment sign or a new table row.
_BOUNDARY = re.compile(r"\.\s|\"\"\"|\n\s*\n|\n\s*- |#\s|\n\|")
WINDOW = 300


def _before(text: str, pos: int) -> str:
    w = text[max(0, pos - WINDOW):pos]
    cut = [m.end() for m in _BOUNDARY.finditer(w)]
    return w[cut[-1]:] if cut else w


def _after(text: str, pos: int) -> str:
    w = text[pos:pos + WINDOW]
    m = _BOUNDARY.search(w)
    return w[:m.start()] if m else w


def target(m: re.Match, text: str) -> str:
    """The docs page#anchor for one generic citation `m` in `text`."""
    key = "preamble" if m["body"] == "preamble" else int(m["sec"])
    default, rules = SECTIONS.get(key, (PAGES, []))  # an unknown section: the index of the pages
    for part in (m["step"], m["quote"], m["range"] and m["sec"] + m["range"]):
        if part:
            return FIXED.get(part, CONTROLLED if key == 7 else default.split("#")[0])
    before = _before(text, m.start())
    # The rest of the sentence is read only when the citation opens it ("# <tag> §5: layer 7 ..."):
    # otherwise what follows is about something else as often as not.
    part = before if re.search(r"[A-Za-z]{3}", before) else _after(text, m.end())
    return next((t for rx, t in rules if rx.search(part)), default)


def rewrite(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(new text, [(old, new) per rewritten citation])."""
    changes = []

    def phrase_sub(repl):
        def f(m):
            new = m.expand(repl)
            changes.append((m.group(0), new))
            return new
        return f

    for rx, repl in PHRASES:
        text = rx.sub(phrase_sub(repl), text)

    def generic(m):
        new = target(m, text)
        changes.append((m.group(0), new))
        return new

    text = CITE.sub(generic, text)
    return text, changes


# ----------------------------------------------------------------------------- files and checks
OUTSIDE = [re.compile(p) for p in (TAG, SHARED, rf"\b{ARCH}\b", rf"\b{ENV}\b", SEC + r"\s?\d")]


def files(root: Path, tracked_only: bool) -> list[str]:
    args = ["git", "-C", str(root), "ls-files", "-z", "--cached"] + ([] if tracked_only else
                                                                       ["--others", "--exclude-standard"])
    out = subprocess.run(args, check=True, capture_output=True).stdout.decode()
    return sorted({p for p in out.split("\0") if p and (root / p).is_file()})


def read_text(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(root: Path) -> dict[str, set[str]]:
    """{"docs/x.md" (and "README.md"): {anchor, ...}} from the Markdown headings."""
    out = {}
    for p in sorted((root / "docs").glob("*.md")) + [root / "README.md"]:
        if p.is_file():
            heads = [ln.lstrip("#") for ln in p.read_text(encoding="utf-8").splitlines() if re.match(r"#{1,6} ", ln)]
            out[p.relative_to(root).as_posix()] = {github_anchor(h) for h in heads}
    return out


LINK = re.compile(r"\b((?:docs/)?[a-z_]+\.md|README\.md)#([a-z0-9_-]+)")
PAGE_LINK = re.compile(r"\b(docs/[A-Za-z_]+\.md|README\.md|benchmarks/RESULTS\.md)(?:#([a-z0-9_-]+))?")


def broken_links(rel: str, text: str, known: dict[str, set[str]]) -> list[tuple[int, str]]:
    """(line, link) of every page#anchor citation in `text` whose page or heading does not exist."""
    out = []
    for m in LINK.finditer(text):
        page = m[1]
        if not page.startswith("docs/") and page != "README.md":
            if not rel.startswith("docs/"):
                continue  # e.g. "report.md#..." outside docs/ is not a reference-page link
            page = f"docs/{page}"  # a relative link between the docs pages
        if page not in known or m[2] not in known[page]:
            out.append((text.count("\n", 0, m.start()) + 1, m.group(0)))
    return out


def compiles(rel: str, text: str) -> str:
    """'' when `text` compiles as Python (for .py files), else the error."""
    if not rel.endswith(".py"):
        return ""
    try:
        compile(text, rel, "exec")
    except SyntaxError as e:
        return f"{e.msg} (line {e.lineno})"
    return ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=str(Path(__file__).resolve().parent.parent))
    ap.add_argument("--dry-run", action="store_true", help="show what would change, write nothing")
    ap.add_argument("--check", action="store_true", help="exit 1 if an old citation remains or a docs link is broken")
    ap.add_argument("--tracked-only", action="store_true", help="only files git tracks")
    ap.add_argument("--quiet", action="store_true", help="no per-line listing")
    a = ap.parse_args(argv)
    root = Path(a.root).resolve()
    paths = files(root, a.tracked_only)
    if a.check:
        return check(root, paths)
    per_page, per_target, total, failed, long = collections.Counter(), collections.Counter(), 0, [], []
    for rel in paths:
        if rel == SELF:
            continue
        text = read_text(root / rel)
        if text is None:
            continue
        new, changes = rewrite(text)
        if not changes:
            continue
        again, more = rewrite(new)
        assert not more and again == new, f"{rel}: the rewrite is not idempotent: {more[:3]}"
        err = compiles(rel, new)
        if err:
            failed.append(f"{rel}: would not compile after the rewrite: {err}; left unchanged")
            continue
        total += len(changes)
        old_lines = set(text.splitlines())
        long += [f"{rel}: {ln.strip()[:80]}..." for ln in new.splitlines() if len(ln) > LONG and ln not in old_lines]
        for _, n in changes:  # counted once, under the first page it links (compound citations link several)
            page, anchor = (PAGE_LINK.findall(n) or [("(reworded, no link)", "")])[0]
            per_page[page] += 1
            per_target[f"{page}#{anchor}" if anchor else page] += 1
        print(f"{rel}: {len(changes)} {'to change' if a.dry_run else 'changed'}")
        if a.dry_run and not a.quiet:
            for line in difflib.unified_diff(text.splitlines(), new.splitlines(), lineterm="", n=0):
                if not line.startswith(("---", "+++")):
                    print(f"    {line}")
        if not a.dry_run:
            (root / rel).write_text(new, encoding="utf-8")
    print(f"\n{total} citations {'to rewrite' if a.dry_run else 'rewritten'}; per page:")
    for page, n in sorted(per_page.items()):
        print(f"  {n:4d}  {page}")
    if not a.quiet:
        print("per page#anchor:")
        for t, n in sorted(per_target.items()):
            print(f"  {n:4d}  {t}")
    if long:
        print(f"note: {len(long)} rewritten lines are longer than {LONG} characters (nothing enforces a limit; "
              f"rewrap them by hand if you like)" + ("" if a.quiet else ":\n  " + "\n  ".join(long)))
    for f in failed:
        print(f, file=sys.stderr)
    return 1 if failed else 0


def check(root: Path, paths: list[str]) -> int:
    known, bad = anchors(root), []
    for rel in paths:
        text = read_text(root / rel)
        if text is None:
            continue
        # this file holds the section signs of its own tables, but no tag and no outside path
        rules = OUTSIDE[:-1] if rel == SELF else OUTSIDE
        for i, line in enumerate(text.splitlines(), 1):
            if any(rx.search(line) for rx in rules):
                bad.append(f"{rel}:{i}: {line.strip()}")
        if rel != SELF:
            bad += [f"{rel}:{i}: broken docs link {link}" for i, link in broken_links(rel, text, known)]
    for b in bad:
        print(b)
    print(f"{len(bad)} problem(s) in {len(paths)} files" if bad else f"ok: {len(paths)} files")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
