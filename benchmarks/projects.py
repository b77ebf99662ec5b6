"""Project folders of their own for benchmark and test runs."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def as_project(folder: Path) -> Path:
    """``folder`` made a project folder (the entry points work in the nearest one holding
    dvc.yaml), for a run's outputs and MLflow store apart from the repository's."""
    if not (folder / "dvc.yaml").is_file():
        shutil.copy2(REPO / "dvc.yaml", folder / "dvc.yaml")
    return folder
