"""Where the stages write: the train stage's outputs (the DVC outs of ``train``), which
evaluate and generate read."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras

from dcgan.config import PathsConfig
from dcgan.errors import UserError

RERUN_TRAIN = "run the train stage first (dvc repro train)"


@dataclass(frozen=True)
class TrainOutputs:
    models_dir: Path
    reports_dir: Path

    @property
    def generator(self) -> Path:
        return self.models_dir / "generator.keras"

    @property
    def discriminator(self) -> Path:
        return self.models_dir / "discriminator.keras"

    @property
    def best_generator(self) -> Path:
        """The generator of the round with the lowest in-training FID."""
        return self.models_dir / "generator_best.keras"

    @property
    def checkpoints(self) -> Path:
        return self.models_dir / "checkpoints"

    @property
    def run_info(self) -> Path:
        return self.models_dir / "run.json"

    @property
    def samples(self) -> Path:
        return self.reports_dir / "samples"

    @property
    def history(self) -> Path:
        return self.reports_dir / "train_history.csv"

    @property
    def metrics(self) -> Path:
        return self.reports_dir / "train_metrics.json"


def outputs_of(paths: PathsConfig) -> TrainOutputs:
    return TrainOutputs(Path(paths.models_dir), Path(paths.reports_dir))


def load_trained(path: Path) -> keras.Model:
    if not path.is_file():
        raise UserError(f"{path}: trained model not found; {RERUN_TRAIN}")
    if not zipfile.is_zipfile(path):  # Keras itself calls a truncated archive "File not found"
        raise UserError(
            f"{path}: not a readable Keras model (truncated or damaged: not a complete .keras archive); "
            "rerun the train stage (dvc repro -f train)"
        )
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras reports a damaged archive as anything from ValueError to KeyError
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise UserError(
            f"{path}: not a readable Keras model ({reason}); rerun the train stage (dvc repro -f train)"
        ) from None
