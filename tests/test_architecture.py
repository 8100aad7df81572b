"""The code's shape: no import cycle, and no module reaching into another's private names."""

import ast
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("digitjax", "webui")


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph(*PACKAGES, include_external_packages=False)


def test_no_import_cycle(graph):
    """Every import a -> b has no chain back from b to a, lazy (function-level) imports included."""
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            if back := graph.find_shortest_chain(importer=imported, imported=importer):
                cycles.append(" -> ".join((importer, *back)))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_check_sees_a_cycle(tmp_path, monkeypatch):
    """The check above is able to fail: a two-module cycle is found."""
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclic import b\n")
    (package / "b.py").write_text("def f():\n    from cyclic import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    g = grimp.build_graph("cyclic", include_external_packages=False, cache_dir=None)
    assert g.find_shortest_chain(importer="cyclic.b", imported="cyclic.a") == ("cyclic.b", "cyclic.a")


def _private_imports(path: Path) -> list[str]:
    """`from pkg.mod import _name` and `mod._name` where mod is a digitjax or webui module."""
    tree = ast.parse(path.read_text())
    own = {
        alias.asname or alias.name.split(".")[-1]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        if node.module and node.module.split(".")[0] in PACKAGES
        for alias in node.names
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            found += [f"from {node.module} import {a.name}" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if isinstance(node.value, ast.Name) and node.value.id in own:
                found.append(f"{node.value.id}.{node.attr}")
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_reaches_into_anothers_private_names(package):
    found = {str(p.relative_to(ROOT)): hits for p in (ROOT / package).rglob("*.py") if (hits := _private_imports(p))}
    assert not found, found
