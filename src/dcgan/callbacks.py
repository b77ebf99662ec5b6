"""Keras callbacks for a training run: throughput, divergence, sample grids, MLflow metrics,
checkpoints.

An epoch here is Keras' ``steps_per_epoch`` steps between two checkpoints (a pass over the
data, or ``train.interval`` steps: see ``dcgan.resume``). The callbacks run in the order
``fit`` is given them and share one ``logs`` dict per epoch, so ``Throughput`` adds
``images_per_sec`` before the others read it, ``DivergenceGuard`` stops a diverged epoch
before anything of it is written, and ``Checkpointer`` (last) commits an epoch only after its
grid and metrics are written.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import keras
import mlflow
import numpy as np

from dcgan import viz
from dcgan.checkpoints import CheckpointDir, RunState, assign_locally
from dcgan.data.tfrecords import to_uint8
from dcgan.errors import TrainingDiverged
from dcgan.quality import QUALITY_KEYS, Scorer, samples_of
from dcgan.signals import StopSignals

PROGRESS = "progress/"  # prefix of in-training quality metrics in ``logs`` and MLflow
HISTORY_KEYS = (
    "epoch",
    "iteration",
    "d_loss",
    "g_loss",
    "d_real",
    "d_fake",
    "images_per_sec",
    "epoch_seconds",
    "skipped_steps",
    *QUALITY_KEYS,
)


class Throughput(keras.callbacks.Callback):
    """Per epoch: ``epoch_seconds`` spent in training steps and ``images_per_sec``. Over the
    run: ``overhead``, the share of wall time spent outside training steps (grids, metrics,
    MLflow, checkpoints), from the second epoch on so that tracing does not count."""

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size = batch_size
        self.epoch_starts: list[float] = []
        self.step_seconds: list[float] = []

    def on_epoch_begin(self, epoch_index, logs=None):
        self.epoch_starts.append(time.perf_counter())

    def on_train_batch_end(self, batch, logs=None):
        self.steps = batch + 1  # a resumed epoch may be shorter than the others

    def on_epoch_end(self, epoch_index, logs=None):
        seconds = time.perf_counter() - self.epoch_starts[-1]
        self.step_seconds.append(seconds)
        logs["epoch_seconds"] = seconds
        logs["images_per_sec"] = self.steps * self.batch_size / seconds

    def on_train_end(self, logs=None):
        first = 1 if len(self.step_seconds) > 1 else 0
        wall = time.perf_counter() - self.epoch_starts[first]
        self.overhead = 1.0 - sum(self.step_seconds[first:]) / wall


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training at the first sign of divergence, keeping the last checkpoint: a
    non-finite loss after any step, or, at an epoch's end, non-finite samples of ``noise``
    (weights grown so large that the generator overflows while the step's losses, computed
    before its update, were still finite): that epoch's grid, scores and checkpoint would
    hold a generator that draws nothing."""

    def __init__(self, checkpoints: CheckpointDir, state: RunState, noise: np.ndarray):
        super().__init__()
        self.checkpoints = checkpoints
        self.state = state
        self.noise = noise

    def on_epoch_begin(self, epoch_index, logs=None):
        self.epoch_start = self.state.step

    def on_train_batch_end(self, batch, logs=None):
        self.step = self.epoch_start + batch + 1  # as Checkpointer counts: a resumed epoch starts mid-way
        for key in ("d_loss", "g_loss"):
            value = float(logs[key])
            if not math.isfinite(value):
                self._stop(f"{key} became {value} at step {self.step}")

    def on_epoch_end(self, epoch_index, logs=None):
        if not np.isfinite(self.model.sampler(self.noise, training=False)).all():
            self._stop(f"the generator's samples became non-finite in step {self.step}")

    def _stop(self, what: str):
        kept = (
            f"the last good checkpoint {self.checkpoints.folder / self.state.checkpoint} is kept"
            if self.state.checkpoint
            else "no checkpoint was written yet"
        )
        raise TrainingDiverged(
            f"{what}; training stopped and {kept}; lower the learning rate, or rerun with train.resume=never to "
            "start over"
        )


class SampleGrid(keras.callbacks.Callback):
    """After every epoch, render the same fixed noise into ``samples_dir/epoch_NNNN.png``
    (and to MLflow, unless the run logged that epoch before: ``logged_epochs``)."""

    def __init__(self, noise: np.ndarray, columns: int, manifest: dict, samples_dir: Path, logged_epochs: int = 0):
        super().__init__()
        self.noise = noise
        self.columns = columns
        self.manifest = manifest
        self.samples_dir = samples_dir
        self.logged_epochs = logged_epochs

    def on_epoch_end(self, epoch_index, logs=None):
        images = to_uint8(self.model.sampler(self.noise, training=False), self.manifest)
        path = self.samples_dir / f"epoch_{epoch_index + 1:04d}.png"
        grid = viz.upscale(viz.grid(images, self.columns), 4)
        viz.save_png(path, grid)
        if epoch_index < self.logged_epochs:
            return
        mlflow.log_artifact(str(path), artifact_path="samples")
        # By step too, so the UI's image view compares runs epoch by epoch.
        mlflow.log_image(
            grid[..., 0] if grid.ndim == 3 and grid.shape[-1] == 1 else grid, key="samples", step=epoch_index + 1
        )


class QualityMonitor(keras.callbacks.Callback):
    """Every ``every`` epochs and after the last, score samples of fixed noise against the
    real test split (FID & co. on a smaller sample than ``evaluate``), as ``progress/<key>``."""

    def __init__(self, scorer: Scorer, noise: np.ndarray, every: int, last_epoch: int):
        super().__init__()
        self.scorer = scorer
        self.noise = noise
        self.every = every
        self.last_epoch = last_epoch

    def on_epoch_end(self, epoch_index, logs=None):
        if (epoch_index + 1) % self.every and epoch_index + 1 != self.last_epoch:
            return
        scores = self.scorer.score(samples_of(self.model.sampler, self.noise))
        logs.update({PROGRESS + key: value for key, value in scores.items()})


def epoch_logs(row: dict) -> dict[str, float]:
    """A history row (``Checkpointer``) as the metrics ``MLflowMetrics`` logged for its epoch."""
    return {
        PROGRESS + key if key in QUALITY_KEYS else key: value
        for key, value in row.items()
        if key not in ("epoch", "iteration")
    }


class MLflowMetrics(keras.callbacks.Callback):
    """Each epoch's ``logs`` as MLflow metrics at step = epoch, except epochs the run logged
    before (``logged_epochs``; a run resumed from an older checkpoint redoes them, with the
    same values)."""

    def __init__(self, logged_epochs: int = 0):
        super().__init__()
        self.logged_epochs = logged_epochs

    def on_epoch_end(self, epoch_index, logs=None):
        if epoch_index >= self.logged_epochs:
            mlflow.log_metrics({key: float(value) for key, value in logs.items()}, step=epoch_index + 1)


class Checkpointer(keras.callbacks.Callback):
    """Commit each finished epoch into the checkpoint folder (its history row, the generator
    if its FID is the best so far, then the checkpoint and the record naming both), and
    check every step for a stop signal: it saves a checkpoint of the step just finished and
    stops.

    ``resumed_metrics``: the loss trackers' totals saved mid-epoch, restored when the epoch
    restarts (after Keras has reset them), so its logged means cover all of its steps.
    """

    def __init__(
        self,
        checkpoints: CheckpointDir,
        state: RunState,
        steps_per_epoch: int,
        stop: StopSignals,
        resumed_metrics: list | None = None,
    ):
        super().__init__()
        self.checkpoints = checkpoints
        self.state = state
        self.steps_per_epoch = steps_per_epoch
        self.stop = stop
        self.resumed_metrics = resumed_metrics

    def on_epoch_begin(self, epoch_index, logs=None):
        self.epoch_start = self.state.step
        self.epoch_end = (epoch_index + 1) * self.steps_per_epoch
        if self.resumed_metrics is not None:
            assign_locally(self.model.metrics_variables, self.resumed_metrics)
            self.resumed_metrics = None

    def on_train_batch_end(self, batch, logs=None):
        step = self.epoch_start + batch + 1
        if self.stop.received is not None and step < self.epoch_end:  # at the end, the epoch commits first
            self.state.step = step
            self.checkpoints.save(self.model.state_variables(), self.state)
            self._interrupted()

    def _interrupted(self):
        self.stop.check(
            f"stopped after step {self.state.step}, checkpoint saved in {self.checkpoints.folder}; rerun the "
            "same command to resume"
        )

    def on_epoch_end(self, epoch_index, logs=None):
        row = {
            "epoch": epoch_index + 1,
            "iteration": (epoch_index + 1) * self.steps_per_epoch,
            **{key: round(float(logs[key]), 6) for key in HISTORY_KEYS[2:] if key in logs},
            **{key: round(float(logs[PROGRESS + key]), 6) for key in QUALITY_KEYS if PROGRESS + key in logs},
        }
        self.state.history = [r for r in self.state.history if r["epoch"] <= epoch_index] + [row]
        self.state.epochs = epoch_index + 1
        self.state.step = row["iteration"]
        if "fid" in row and (self.state.best is None or row["fid"] < self.state.best["fid"]):
            self.checkpoints.save_best(self.model.sampler, self.state, row["epoch"], row["fid"])
        self.checkpoints.save(self.model.state_variables(), self.state)
        if self.stop.received is not None:
            self._interrupted()
