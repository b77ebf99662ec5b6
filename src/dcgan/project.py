"""The project folder, the one holding ``dvc.yaml``: the entry points work there, whichever
folder they are started from, so every relative path (``paths.*``, ``mlflow.db``) means the
same place."""

from __future__ import annotations

import os
from pathlib import Path

from dcgan.errors import UserError

MARKER = "dvc.yaml"


def find_root(start: Path) -> Path | None:
    """The nearest folder at or above ``start`` that holds ``dvc.yaml``."""
    start = start.resolve()
    return next((folder for folder in (start, *start.parents) if (folder / MARKER).is_file()), None)


def enter_root(script: str) -> Path:
    """Change into the project folder of the working directory; refuse outside a project
    (started from a stray folder, a run would build a second project there)."""
    cwd = Path.cwd()
    root = find_root(cwd)
    if root is None:
        own = find_root(Path(script).parent)
        where = f"cd {own}" if own else "cd into the project folder"
        raise UserError(
            f"{cwd}: not inside a project (no {MARKER} here or in a parent folder); {where}, "
            f"or make this folder one by copying {MARKER} into it"
        )
    if root != cwd.resolve():
        os.chdir(root)
    return root


def project_root() -> Path:
    """The project folder: the working directory (the entry points have entered it), or,
    inside a queued DVC experiment's temp copy (``<project>/.dvc/tmp/exps/...``), the project
    that queued it, so its runs land in the same MLflow store as direct runs."""
    cwd = Path.cwd().resolve()
    parts = cwd.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return cwd
