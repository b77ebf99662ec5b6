"""The import graph points one way: entry points -> stages -> library; no library module
imports a stage and no stage imports another."""

import ast
import re
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "src" / "dcgan"
STAGE = re.compile(r"dcgan(\.\w+)+:\w+")


def imported_modules(path: Path) -> set[str]:
    """The modules ``path`` imports, an entry point's stage named as "module:function" for
    ``run_stage`` (imported once the config is valid) included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and STAGE.fullmatch(node.value):
            found.add(node.value.split(":")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_library_module_imports_a_command_and_no_command_imports_another():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = "dcgan." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        commands = {name for name in imported_modules(path) if name.startswith("dcgan.commands.")}
        if not module.startswith("dcgan.commands.") and commands:
            wrong.append(f"{module} imports {sorted(commands)}")
        if module.startswith("dcgan.commands.") and {name.split(".")[2] for name in commands} - {module.split(".")[2]}:
            wrong.append(f"{module} imports {sorted(commands)}")
    assert wrong == []


def _module_file(name: str) -> Path | None:
    parts = name.split(".")[1:]
    for candidate in (PACKAGE.joinpath(*parts).with_suffix(".py"), PACKAGE.joinpath(*parts, "__init__.py")):
        if parts and candidate.is_file():
            return candidate
    return PACKAGE / "__init__.py" if not parts else None


def project_files_imported_by(entry: Path) -> set[Path]:
    """Every file of the package that ``entry`` imports, directly or through others."""
    seen, todo = set(), [entry]
    while todo:
        path = todo.pop()
        for name in imported_modules(path):
            file = _module_file(name) if name == "dcgan" or name.startswith("dcgan.") else None
            if file is not None and file not in seen:
                seen.add(file)
                todo.append(file)
            if file is not None and file.name != "__init__.py":  # importing a module imports its package
                package_init = file.parent / "__init__.py"
                if package_init.is_file() and package_init not in seen:
                    seen.add(package_init)
                    todo.append(package_init)
    return seen


NOT_DEPS = {"train": {PACKAGE / "viz.py"}}


def architecture_files() -> set[Path]:
    """The architecture modules and what they import from their package."""
    from dcgan.models import architectures

    files = [Path(module.__file__) for module in architectures().values()]
    return {f for file in files for f in {file, *project_files_imported_by(file)} if f.parent == PACKAGE / "models"}


def test_each_stage_depends_on_the_code_it_runs_and_not_on_the_rest():
    """dvc.yaml lists each stage's code narrowly, so editing code a stage does not run does
    not rerun it. Deliberate exceptions: how train's sample grids are drawn (viz.py), and the
    architectures, which every stage imports to check the model settings but only those
    listing src/dcgan/models build."""
    import yaml

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        deps = [REPO / dep for dep in stage["deps"] if not dep.startswith("$")]
        covered = lambda file: any(file == dep or dep in file.parents for dep in deps)  # noqa: E731
        needed = project_files_imported_by(REPO / "src" / f"{name}.py")
        exempt = NOT_DEPS.get(name, set()) | architecture_files()
        missing = sorted(str(f.relative_to(REPO)) for f in needed if not covered(f) and f not in exempt)
        assert missing == [], f"{name}: {missing}"
        entry = REPO / "src" / f"{name}.py"
        unused = sorted(str(d.relative_to(REPO)) for d in deps if d.suffix == ".py" and d not in needed and d != entry)
        assert unused == [], f"{name}: {unused}"
        assert [str(d.relative_to(REPO)) for d in deps if not d.exists()] == [], f"{name}: deps that do not exist"
        assert REPO / "src/dcgan" not in deps, f"{name} depends on the whole package"
