"""Import arrows point down: the shared package imports no model package, and the model
packages import each other only one way (stdiff -> temporal), read from the source with `ast`
(lazy imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("wavecast", "wfvae", "stdiff", "temporal")
# package -> the other packages of this repository it may import
ALLOWED = {
    "wavecast": set(),
    "wfvae": {"wavecast"},
    "temporal": {"wavecast"},
    "stdiff": {"wavecast", "temporal"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every module `path` imports (absolute imports only)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_lies_below_it(package: str) -> None:
    forbidden = set(PACKAGES) - ALLOWED[package] - {package}
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & forbidden)
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"{package} may not import {sorted(forbidden)}: {offenders}"


def test_the_checker_sees_lazy_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from temporal.flow import x\n    import stdiff.model\n")
    assert imported_packages(src) == {"temporal", "stdiff"}
