"""The host boundary, checked on the source: the core never imports the WebUI, and nothing imports a
host package at module level (``ldm``/``sgm`` break Forge 2, ``backend``/``ldm_patched`` break A1111)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HOST_ROOTS = {"modules", "ldm", "sgm", "backend", "ldm_patched", "modules_forge", "launch"}
SOURCES = sorted([*(ROOT / "freecure").rglob("*.py"), *(ROOT / "scripts").glob("*.py")])


def imported_roots(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.name.split(".")[0] for alias in node.names}
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return {node.module.split(".")[0]}
    return set()


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_level_import_of_a_host_only_package(path: Path) -> None:
    tree = ast.parse(path.read_text())
    module_level = set().union(*(imported_roots(node) for node in tree.body))
    allowed = {"modules"} if path.parent.name == "scripts" else set()  # both hosts have modules.scripts
    assert not (module_level & HOST_ROOTS) - allowed


@pytest.mark.parametrize("path", [p for p in SOURCES if "webui" not in p.parts and p.parent.name != "scripts"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_never_imports_the_webui(path: Path) -> None:
    everywhere = set().union(*(imported_roots(node) for node in ast.walk(ast.parse(path.read_text()))))
    assert not everywhere & HOST_ROOTS
