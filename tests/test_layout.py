"""The package's layout rules (docs/api_contract.md, rule 8): no import circles between modules, a capability
with several private modules in its own subpackage, each package's ``__all__`` written as one list."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "pathkit"


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the pathkit modules it imports relatively, at the top or inside functions."""
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                for cand in [target] + [f"{target}.{a.name}" for a in node.names]:
                    if cand in mods and cand != m:
                        edges[m].add(cand)
    return edges


def test_no_import_circles_between_modules():
    mods = _modules()
    edges = _imports(mods)
    circles = sorted({tuple(sorted((a, b))) for a in edges for b in edges[a]
                      if a in edges.get(b, ()) and not (a.startswith(b + ".") or b.startswith(a + "."))})
    assert not circles, f"modules importing each other (move the shared pieces down): {circles}"


def test_mil_and_survival_are_subpackages():
    tl = PKG / "tl"
    assert not list(tl.glob("_mil_*.py")), "MIL modules belong in pathkit/tl/_mil/"
    assert (tl / "_mil" / "__init__.py").exists() and (tl / "survival" / "__init__.py").exists()
    assert not (tl / "_cox.py").exists() and not (tl / "_kaplan_meier.py").exists()


def test_each_packages_all_is_one_list_of_names_it_has():
    import importlib

    for init in sorted(PKG.rglob("__init__.py")):
        tree = ast.parse(init.read_text())
        aug = [n for n in ast.walk(tree) if isinstance(n, ast.AugAssign) and getattr(n.target, "id", "") == "__all__"]
        assert not aug, f"{init}: write __all__ as one list (no __all__ += ...)"
        if any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in n.targets)
               for n in tree.body):
            parts = list(init.relative_to(PKG.parent).parent.parts)
            mod = importlib.import_module(".".join(parts))
            assert len(set(mod.__all__)) == len(mod.__all__), f"{init}: duplicated names in __all__"
            assert not [n for n in mod.__all__ if not hasattr(mod, n)], init
