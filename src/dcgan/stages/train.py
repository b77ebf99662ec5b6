"""The train stage: prepared TFRecords -> trained GAN, checkpoints, grids and an MLflow run."""

from __future__ import annotations

import io
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf

from dcgan import models, tracking, viz
from dcgan.callbacks import Checkpointer, MLflowMetrics, SampleGrid, Throughput
from dcgan.checkpoints import CheckpointDir, RunState
from dcgan.config import Config, OptimizerConfig, run_identity
from dcgan.data.pipeline import training_dataset
from dcgan.data.tfrecords import manifest_sha256
from dcgan.errors import UserError
from dcgan.files import write_json
from dcgan.gan import GAN
from dcgan.stages.prepare import prepared_dataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOutputs:
    """Where a training run writes; the DVC outs of the train stage."""

    models_dir: Path
    reports_dir: Path

    @property
    def generator(self) -> Path:
        return self.models_dir / "generator.keras"

    @property
    def discriminator(self) -> Path:
        return self.models_dir / "discriminator.keras"

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


def outputs_of(config: Config) -> TrainOutputs:
    return TrainOutputs(Path(config.paths.models_dir), Path(config.paths.reports_dir))


def make_optimizer(optimizer: OptimizerConfig, network: str) -> keras.optimizers.Optimizer:
    settings = dict(vars(getattr(optimizer, network)))
    if optimizer.name == "adam":
        return keras.optimizers.Adam(**settings, name=f"{network}_adam")
    decay = settings.pop("decay")
    if decay:
        # Keras 2's `decay` argument, as the Keras 3 schedule computing the same lr / (1 + decay * step).
        settings["learning_rate"] = keras.optimizers.schedules.InverseTimeDecay(settings["learning_rate"], decay_steps=1, decay_rate=decay)
    return keras.optimizers.RMSprop(**settings, name=f"{network}_rmsprop")


def seed_everything(config: Config) -> None:
    keras.utils.set_random_seed(config.train.seed)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()


def build_gan(config: Config, manifest: dict) -> GAN:
    generator, discriminator = models.build(config.model, tuple(manifest["image_shape"]), manifest["normalization"]["range"])
    gan = GAN(generator, discriminator, config.model.latent_dim, seed=config.train.seed, label_noise=config.train.label_noise)
    gan.compile(
        d_optimizer=make_optimizer(config.optimizer, "discriminator"),
        g_optimizer=make_optimizer(config.optimizer, "generator"),
        loss_fn=keras.losses.BinaryCrossentropy(from_logits=config.model.d_output == "logits"),
    )
    # Optimizer slots exist only once built; a checkpoint restore needs them now.
    gan.d_optimizer.build(discriminator.trainable_variables)
    gan.g_optimizer.build(generator.trainable_variables)
    return gan


def _summary(model: keras.Model) -> str:
    buffer = io.StringIO()
    model.summary(print_fn=lambda line, **_: buffer.write(line + "\n"))
    return buffer.getvalue()


def _log_architecture(gan: GAN) -> None:
    """Text summaries and diagrams of both networks, as MLflow artifacts."""
    mlflow.log_text(_summary(gan.generator) + "\n" + _summary(gan.discriminator), "model_summary.txt")
    with tempfile.TemporaryDirectory() as tmp:
        for network in (gan.generator, gan.discriminator):
            diagram = Path(tmp) / f"{network.name}.png"
            if not viz.architecture_diagram(network, diagram):
                log.warning("architecture diagrams skipped: Graphviz is not installed (apt-get install graphviz)")
                return
            mlflow.log_artifact(str(diagram), artifact_path="architecture")


@dataclass(frozen=True)
class Schedule:
    """How ``fit`` runs: ``epochs`` rounds of ``steps_per_epoch`` steps, a checkpoint and a
    sample grid after each. By default a round is one pass over the data; with
    ``train.interval`` it is that many steps; ``train.iterations`` replaces ``train.epochs``."""

    steps_per_epoch: int
    epochs: int

    @classmethod
    def of(cls, config: Config, train_count: int, prepared: Path) -> "Schedule":
        train = config.train
        per_pass = train_count // train.batch_size
        if per_pass == 0:
            raise UserError(f"config key train.batch_size: {train.batch_size} exceeds the {train_count} training images in {prepared}")
        interval = train.interval or per_pass
        total = train.iterations or train.epochs * per_pass
        if total % interval:
            key = "train.iterations" if train.iterations else "train.epochs"
            raise UserError(f"config key train.interval: {interval} steps do not divide the {total} steps of {key}")
        return cls(interval, total // interval)


def _resume_state(checkpoints: CheckpointDir, identity: dict, config: Config, schedule: Schedule) -> RunState | None:
    """The checkpoint state to resume, or None to start over (clearing a stale checkpoint)."""
    state = checkpoints.load_state()
    if state is None or state.checkpoint is None:
        return None
    if config.train.resume == "never":
        log.info("train.resume=never: discarding the checkpoint in %s", checkpoints.folder)
    elif state.epoch > schedule.epochs:
        log.warning("checkpoint in %s is past the requested training length; starting over", checkpoints.folder)
    elif state.identity != identity:
        changed = sorted(k for k in set(state.identity) | set(identity) if state.identity.get(k) != identity.get(k))
        log.warning("checkpoint in %s is from a different run (differs in: %s); starting over", checkpoints.folder, ", ".join(changed))
    else:
        return state
    checkpoints.clear()
    return None


def _save_keras(model: keras.Model, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def train(config: Config) -> dict:
    """Train (or resume) the configured GAN; returns the final epoch's metrics."""
    tracking.connect(config)  # before any work: an unusable store fails in seconds
    out = outputs_of(config)
    prepared, manifest = prepared_dataset(config)
    schedule = Schedule.of(config, manifest["splits"]["train"]["count"], prepared)

    seed_everything(config)
    gan = build_gan(config, manifest)
    identity = {**run_identity(config), "data.manifest_sha256": manifest_sha256(prepared)}
    checkpoints = CheckpointDir(out.checkpoints, config.train.keep_checkpoints)
    state = _resume_state(checkpoints, identity, config, schedule)
    if state is not None:
        checkpoints.restore(gan.state_variables(), state)
        log.info("resuming from %s after epoch %d", checkpoints.folder / state.checkpoint, state.epoch)
    else:
        state = RunState(identity=identity)
        shutil.rmtree(out.samples, ignore_errors=True)

    noise = np.random.default_rng(config.train.sample_seed).standard_normal(
        (config.train.sample_grid**2, config.model.latent_dim)
    ).astype(np.float32)
    with tracking.start_run(config, state.mlflow_run_id) as run:
        if state.mlflow_run_id is None:
            state.mlflow_run_id = run.info.run_id
            mlflow.log_dict(manifest, "data/manifest.json")
            _log_architecture(gan)
        write_json(out.run_info, {"mlflow_run_id": run.info.run_id, "tracking_uri": mlflow.get_tracking_uri()})
        callbacks = [
            Throughput(schedule.steps_per_epoch * config.train.batch_size),
            SampleGrid(noise, config.train.sample_grid, manifest, out.samples),
            MLflowMetrics(),
            Checkpointer(checkpoints, state, out.history, schedule.steps_per_epoch),
        ]
        dataset = training_dataset(
            prepared, manifest, config.train.batch_size, config.train.seed, config.train.shuffle_buffer,
            state.epoch * schedule.steps_per_epoch,
        )
        if state.epoch < schedule.epochs:
            gan.fit(
                dataset,
                epochs=schedule.epochs,
                initial_epoch=state.epoch,
                steps_per_epoch=schedule.steps_per_epoch,
                shuffle=False,  # the dataset shuffles itself, reproducibly per epoch
                callbacks=callbacks,
                verbose=1 if sys.stdout.isatty() else 2,
            )
        final = state.history[-1]
        _save_keras(gan.generator, out.generator)
        _save_keras(gan.discriminator, out.discriminator)
        write_json(out.metrics, final)
        mlflow.log_metrics({f"final_{k}": v for k, v in final.items() if k not in ("epoch", "iteration")})
        tracking.log_generator(gan.generator, config.model.latent_dim, final["epoch"])
    return final
