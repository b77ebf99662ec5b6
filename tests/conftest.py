"""Shared fixtures: the real dataset mirror, composed configs, a tiny prepared MNIST slice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from dcgan.config import MIRROR_ENV, Config, validate

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get(MIRROR_ENV) or REPO.parent / "shared" / "datasets").resolve()
TINY = ["+experiment=tiny"]


def pytest_configure(config):
    if not (MIRROR / "mnist").is_dir():
        raise pytest.UsageError(f"dataset mirror not found at {MIRROR}; set {MIRROR_ENV}")
    os.environ[MIRROR_ENV] = str(MIRROR)


def compose_config(overrides: list[str] = (), tmp_path: Path | None = None) -> Config:
    """The real composed config with ``overrides``, its outputs under ``tmp_path``."""
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    config = validate(cfg)
    if tmp_path is not None:
        config.paths.raw_dir = str(tmp_path / "data/raw")
        config.paths.prepared_dir = str(tmp_path / "data/prepared")
        config.paths.models_dir = str(tmp_path / "models")
        config.paths.reports_dir = str(tmp_path / "reports")
        config.paths.classifier_dir = str(tmp_path / "models/classifier")
        config.tracking.uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return config


@pytest.fixture(autouse=True)
def float32_policy():
    """Building a GAN sets Keras' global dtype policy (train.precision); reset it after each test."""
    yield
    import keras

    keras.mixed_precision.set_dtype_policy("float32")


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory) -> Config:
    """A config whose prepared data (512 MNIST training images) already exists."""
    from dcgan.stages.prepare import prepare

    config = compose_config(TINY, tmp_path_factory.mktemp("tiny"))
    prepare(config)
    return config


def run_stage(stage: str, *overrides: str, cwd: Path, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``src/<stage>.py`` as a user would, in ``cwd`` (its MLflow store: ``cwd/mlflow.db``)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run(
        [sys.executable, str(REPO / "src" / f"{stage}.py"), *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{stage} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result
