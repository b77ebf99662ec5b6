"""Keras callbacks for a training run: throughput, sample grids, MLflow metrics, checkpoints.

They run in the order ``fit`` is given them and share one ``logs`` dict per epoch, so
``Throughput`` adds ``images_per_sec`` before the others read it, and ``Checkpointer``
(last) commits an epoch only after its grid and metrics are written.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import keras
import mlflow
import numpy as np

from dcgan import viz
from dcgan.checkpoints import CheckpointDir, RunState
from dcgan.data.tfrecords import to_uint8
from dcgan.files import atomic_write_text

HISTORY_KEYS = ("epoch", "iteration", "d_loss", "g_loss", "d_real", "d_fake", "images_per_sec", "epoch_seconds")


class Throughput(keras.callbacks.Callback):
    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images_per_epoch = images_per_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.started
        logs["epoch_seconds"] = seconds
        logs["images_per_sec"] = self.images_per_epoch / seconds


class SampleGrid(keras.callbacks.Callback):
    """After every epoch, render the same fixed noise into ``samples_dir/epoch_NNNN.png``."""

    def __init__(self, noise: np.ndarray, columns: int, manifest: dict, samples_dir: Path):
        super().__init__()
        self.noise = noise
        self.columns = columns
        self.manifest = manifest
        self.samples_dir = samples_dir

    def on_epoch_end(self, epoch, logs=None):
        images = to_uint8(self.model.generator(self.noise, training=False), self.manifest)
        path = self.samples_dir / f"epoch_{epoch + 1:04d}.png"
        viz.save_png(path, viz.upscale(viz.grid(images, self.columns), 4))
        mlflow.log_artifact(str(path), artifact_path="samples")


class MLflowMetrics(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        mlflow.log_metrics({key: float(value) for key, value in logs.items()}, step=epoch + 1)


def write_history(path: Path, history: list[dict]) -> None:
    """The per-epoch metrics as CSV, the file ``dvc plots`` draws."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_KEYS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


class Checkpointer(keras.callbacks.Callback):
    """Commit each finished epoch: history row, history CSV, then the checkpoint itself."""

    def __init__(self, checkpoints: CheckpointDir, state: RunState, history_path: Path, steps_per_epoch: int):
        super().__init__()
        self.checkpoints = checkpoints
        self.state = state
        self.history_path = history_path
        self.steps_per_epoch = steps_per_epoch

    def on_epoch_end(self, epoch, logs=None):
        row = {
            "epoch": epoch + 1,
            "iteration": (epoch + 1) * self.steps_per_epoch,
            **{key: round(float(logs[key]), 6) for key in HISTORY_KEYS[2:] if key in logs},
        }
        self.state.history = [r for r in self.state.history if r["epoch"] <= epoch] + [row]
        self.state.epoch = epoch + 1
        write_history(self.history_path, self.state.history)
        self.checkpoints.save(self.model.state_variables(), self.state)
