"""Every module says its one job, and its package's docstring names it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "agent"
PACKAGES = [AGENT, *(path.parent for path in AGENT.glob("*/__init__.py"))]


@pytest.mark.parametrize("package", PACKAGES, ids=lambda path: path.name)
def test_each_module_has_a_docstring_and_its_package_names_it(package: Path) -> None:
    listing = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
    listed = {
        line.removeprefix("- ").split(":")[0].rstrip("/")
        for line in listing.splitlines()
        if line.startswith("- ")
    }
    modules = {path.stem for path in package.glob("*.py")} - {"__init__", "__main__"}
    subpackages = {path.parent.name for path in package.glob("*/__init__.py")}
    assert listed == modules | subpackages
    for module in modules:
        source = (package / f"{module}.py").read_text()
        assert ast.get_docstring(ast.parse(source)), f"{module} has no docstring"
