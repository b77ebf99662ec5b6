"""What the Hydra entry points in ``src/`` share: validation, error reporting, sweep wiring."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from dcgan.config import Config, validate
from dcgan.errors import UserError

def _apply_hydra_context(config: Config) -> None:
    """Name the MLflow run after the command-line overrides, and give each job of a ``-m``
    sweep its own output folders (its own checkpoints, so jobs never resume each other)."""
    if not HydraConfig.initialized():
        return
    hydra = HydraConfig.get()
    overrides = list(hydra.overrides.task)
    if config.tracking.run_name is None and overrides:
        config.tracking.run_name = " ".join(overrides)
    if overrides:
        config.tracking.tags.setdefault("overrides", " ".join(overrides))
    if hydra.mode == RunMode.MULTIRUN:
        job_dir = Path(hydra.runtime.output_dir)
        config.paths.models_dir = str(job_dir / "models")
        config.paths.reports_dir = str(job_dir / "reports")
        config.tracking.tags.setdefault("sweep_dir", hydra.sweep.dir)
        config.tracking.tags.setdefault("sweep_job", str(hydra.job.num))


def run_stage(stage: Callable[[Config], object], cfg: DictConfig) -> None:
    """Validate ``cfg`` and run ``stage``; a user error prints one line and exits 1."""
    try:
        config = validate(cfg)
        _apply_hydra_context(config)
        stage(config)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    finally:
        # Hydra -m runs jobs in one process: each must start from a fresh Keras state.
        if "keras" in sys.modules:
            sys.modules["keras"].backend.clear_session()
