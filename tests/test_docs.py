"""The definitions live in the repository (issue 21 item 1): no tracked file cites a file outside it, and
every `docs/<page>.md#<anchor>` citation in code, README, report text and docs resolves to a heading."""
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE = re.compile("SP" "EC|" + re.escape("../" "shared"))  # spelled apart: this file is tracked too
CITE = re.compile(r"docs/([\w-]+)\.md#([\w-]+)")


def _tracked() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / f for f in out.splitlines() if (ROOT / f).is_file()]


def _text(p: Path) -> str:
    try:
        return p.read_text()
    except UnicodeDecodeError:
        return ""


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_nothing_tracked_cites_a_file_outside_the_repository():
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()[:100]}" for p in _tracked()
            for i, line in enumerate(_text(p).splitlines(), 1) if OUTSIDE.search(line)]
    assert not hits, "\n".join(hits)


def test_every_docs_citation_resolves_to_a_heading():
    anchors = {}
    for page in (ROOT / "docs").glob("*.md"):
        anchors[page.stem] = {anchor(m) for m in re.findall(r"^#+ (.+)$", page.read_text(), re.M)}
    cited = [(p, m) for p in _tracked() for m in CITE.finditer(_text(p))]
    assert len(cited) > 100  # the code cites its definitions
    bad = [f"{p.relative_to(ROOT)}: docs/{pg}.md#{a}" for p, (pg, a) in ((p, m.groups()) for p, m in cited)
           if a not in anchors.get(pg, set())]
    assert not bad, "\n".join(bad)


def test_the_reference_covers_every_metric_objective_localizer_and_statistic():
    text = {p.stem: p.read_text() for p in (ROOT / "docs").glob("*.md")}
    need = {"metrics": ["Extraction Strength", "Exact Match", "ROUGE", "Truth ratio", "Forget Quality",
                        "Model Utility", "AUES", "MU95"],
            "objectives": ["GA", "GradDiff", "WGA", "NPO", "SimNPO", "DPO", "RMU"],
            "localizers": ["random", "activation", "MemFlex", "WAGLE", "gradient", "norm"],
            "statistics": ["Wilcoxon", "bootstrap", "MDD", "censor"],
            "attacks": ["Relearning", "Quantization"]}
    missing = [f"{pg}: {w}" for pg, words in need.items() for w in words if w.lower() not in text[pg].lower()]
    assert not missing
