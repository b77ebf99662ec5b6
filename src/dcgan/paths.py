"""Where the stages write: the train stage's outputs (the DVC outs of ``train``), which
evaluate and generate read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dcgan.config import PathsConfig


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
        """The generator of the epoch with the lowest in-training FID."""
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
