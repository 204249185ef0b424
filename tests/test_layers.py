"""The import direction of the package (docs/architecture.md): every module belongs to one layer, and no
module imports, at the top or inside a function, a module of a higher layer. Computed from the source
(ast), so a new upward import fails here with the file, line and the two layers."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "src" / "loc_unlearn"

LAYERS = [
    # 0: no project imports above; the vocabulary every layer speaks
    {"errors", "registry", "checks", "utils", "runs", "stop", "config", "config_docs"},
    # 1: data and models
    {"data", "models"},
    # 2: the methods and measurements on a model
    {"masks", "train", "evaluate", "attacks"},
    # 3: method plug-ins (load user files, validate names against the registries) and the resource plan
    {"plugins", "plan"},
    # 4: cached stages
    {"stages"},
    # 5: the report (renders results it is given)
    {"report"},
    # 6: study designs
    {"studies"},
    # 7: commands and the command line
    {"commands", "cli"},
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _top(module: str) -> str:
    """'loc_unlearn.train.loop' -> 'train'; the package root ('loc_unlearn', or a name defined in its
    __init__ such as loc_unlearn.__version__) -> ''."""
    parts = module.split(".")
    if len(parts) < 2 or not ((PKG / parts[1]).is_dir() or (PKG / f"{parts[1]}.py").is_file()):
        return ""
    return parts[1]


def _imports(path: Path):
    """(line, imported loc_unlearn module) for every import in `path`, relative ones resolved."""
    rel = path.relative_to(PKG.parent).with_suffix("")
    pkg_parts = list(rel.parts[:-1])  # the package a relative import starts from
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[: len(pkg_parts) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                names = [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
            for n in names:
                if n.startswith("loc_unlearn"):
                    yield node.lineno, n
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("loc_unlearn"):
                    yield node.lineno, a.name


def upward_imports() -> list[str]:
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        mod = ".".join(path.relative_to(PKG.parent).with_suffix("").parts)
        me = _top(mod)
        if me in ("", "__init__"):
            continue  # the package root re-exports the public API lazily (checked below)
        assert me in RANK, f"{path}: module {me!r} is in no layer of LAYERS"
        for line, target in _imports(path):
            other = _top(target)
            if other == "":
                continue
            assert other in RANK, f"{path}:{line}: imports {target}, in no layer of LAYERS"
            if RANK[other] > RANK[me]:
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: {me} (layer {RANK[me]}) imports {target} "
                           f"(layer {RANK[other]})")
    return bad


def test_no_module_imports_a_higher_layer():
    bad = upward_imports()
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The check itself: a function-level import of a command from evaluate/ is reported."""
    fake = PKG / "evaluate" / "_layer_probe.py"
    fake.write_text("def f():\n    from ..commands import COMMANDS\n    return COMMANDS\n")
    try:
        bad = upward_imports()
    finally:
        fake.unlink()
    assert any("_layer_probe.py:2: evaluate (layer 2) imports loc_unlearn.commands" in b for b in bad), bad


def test_importing_the_package_root_is_light():
    """`import loc_unlearn` (what a plug-in file does) pulls in no torch: the CLI's --help stays instant."""
    import subprocess
    import sys

    code = "import sys, loc_unlearn, loc_unlearn.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


if __name__ == "__main__":  # `python tests/test_layers.py`: the check's own report
    modules = sorted(PKG.rglob("*.py"))
    found = upward_imports()
    for name in (n for layer in LAYERS for n in sorted(layer)):
        n_files = sum(1 for p in modules if _top(".".join(p.relative_to(PKG.parent).with_suffix("").parts)) == name)
        print(f"layer {RANK[name]}  {name:12s} {n_files:3d} module(s)")
    print("\n".join(found) if found else f"no upward imports in {len(modules)} modules")
