"""The import graph points one way: entry points -> stages -> library; no library module
imports a stage and no stage imports another."""

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "src" / "dcgan"


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_library_module_imports_a_stage_and_no_stage_imports_another():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = "dcgan." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        stages = {name for name in imported_modules(path) if name.startswith("dcgan.stages.")}
        if not module.startswith("dcgan.stages.") and stages:
            wrong.append(f"{module} imports {sorted(stages)}")
        if module.startswith("dcgan.stages.") and {name.split(".")[2] for name in stages} - {module.split(".")[2]}:
            wrong.append(f"{module} imports {sorted(stages)}")
    assert wrong == []
