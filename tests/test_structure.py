"""The package's structure: no import circle between cvattn's modules."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cvattn"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> set[str]:
    """The cvattn modules ``name`` imports, at module level or inside functions (an import deferred into a
    function to dodge a circle is still a circle in the design).

    ``from cvattn.a import b`` names the submodule ``cvattn.a.b`` when there is one, else the package ``cvattn.a``.
    A package's parent ``__init__`` runs first on every import, which is Python's own order, not a circle, so
    it is not counted.
    """
    tree = ast.parse(MODULES[name].read_text())
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {module for module in found if module in MODULES and module != name}


def test_no_import_circle_between_cvattn_modules():
    graph = {name: _imports(name) for name in MODULES}
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = "open"
        stack.append(name)
        for child in sorted(graph[name]):
            if state.get(child) == "open":
                circle = stack[stack.index(child):] + [child]
                pytest.fail(f"import circle: {' -> '.join(circle)}")
            if child not in state:
                visit(child)
        stack.pop()
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_the_circle_check_sees_a_circle(tmp_path, monkeypatch):
    # The check above must be able to fail: two modules that import each other are reported.
    fake = tmp_path / "cvattn"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "a.py").write_text("from cvattn.b import thing\n")
    (fake / "b.py").write_text("import torch\n\ndef f():\n    from cvattn import a\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    monkeypatch.setattr(sys.modules[__name__], "MODULES",
                        {_module_name(p): p for p in sorted(fake.rglob("*.py"))})
    assert _imports("cvattn.b") == {"cvattn.a"}   # a deferred import counts; modules outside cvattn do not
    with pytest.raises(pytest.fail.Exception, match=r"import circle: cvattn\.a -> cvattn\.b -> cvattn\.a"):
        test_no_import_circle_between_cvattn_modules()
