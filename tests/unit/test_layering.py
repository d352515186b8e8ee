"""Layering rules of the code base, checked on the source tree: no module over 600 lines in the
shipped packages, and the library never imports the Lambda packages (they import it)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("recpipe", "workflows", "lambdas", "infra")
MAX_LINES = 600


def _modules(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def test_the_tree_has_the_packages() -> None:
    for package in PACKAGES:
        assert (ROOT / package / "__init__.py").is_file(), package


@pytest.mark.parametrize("path", _modules(*PACKAGES), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_module_is_over_600_lines(path: Path) -> None:
    name = path.relative_to(ROOT).as_posix()
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (at most {MAX_LINES}): split it"


def _imported(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):  # walk: function-level (lazy) imports count too
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_the_library_never_imports_the_lambdas() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in _modules("recpipe")
        for name in _imported(ast.parse(path.read_text(encoding="utf-8")))
        if name == "lambdas" or name.startswith("lambdas.")
    ]
    assert not offenders, offenders


def test_the_import_check_sees_lazy_imports() -> None:
    tree = ast.parse("def f():\n    from lambdas.publish import publish\n    import lambdas.release\n")
    assert _imported(tree) == ["lambdas.publish", "lambdas.release"]
