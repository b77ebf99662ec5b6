"""The train stage: prepared TFRecords -> trained GAN, checkpoints, grids and an MLflow run."""

from __future__ import annotations

import io
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf

from dcgan import models, quality, tracking, viz
from dcgan.callbacks import Checkpointer, MLflowMetrics, QualityMonitor, SampleGrid, StopSignals, Throughput
from dcgan.checkpoints import CheckpointDir, RunState
from dcgan.config import Config, OptimizerConfig, run_identity, to_dict
from dcgan.data.pipeline import training_dataset
from dcgan.devices import distribution, set_global_seed, set_precision, split_cpu
from dcgan.data.tfrecords import manifest_sha256
from dcgan.errors import Interrupted, UserError
from dcgan.files import check_writable, save_model, write_json
from dcgan.gan import GAN, SkipNonFiniteSteps
from dcgan.models.layers import standard_copy
from dcgan.quality import Scorer
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


def outputs_of(config: Config) -> TrainOutputs:
    return TrainOutputs(Path(config.paths.models_dir), Path(config.paths.reports_dir))


class LinearDecayTail(keras.optimizers.schedules.LearningRateSchedule):
    """``learning_rate`` (a number or a schedule) times a factor that is 1 until the last
    ``share`` of ``total_steps`` and then falls linearly to 0 at the end (the schedule of
    pix2pix and CycleGAN): late small steps settle the generator instead of orbiting."""

    def __init__(self, learning_rate, total_steps: int, share: float):
        self.learning_rate = learning_rate
        self.total_steps = total_steps
        self.share = share

    def __call__(self, step):
        base = self.learning_rate(step) if callable(self.learning_rate) else self.learning_rate
        remaining = (self.total_steps - tf.cast(step, "float32")) / (self.share * self.total_steps)
        return base * tf.clip_by_value(remaining, 0.0, 1.0)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "total_steps": self.total_steps, "share": self.share}


def make_optimizer(optimizer: OptimizerConfig, network: str, lr_decay: float = 0.0, total_steps: int = 0) -> keras.optimizers.Optimizer:
    """The configured optimizer of ``network``; with ``lr_decay`` its learning rate decays
    over the last ``lr_decay`` share of ``total_steps``."""
    settings = dict(vars(getattr(optimizer, network)))
    decay = settings.pop("decay", 0.0)
    if decay:
        # Keras 2's `decay` argument, as the Keras 3 schedule computing the same lr / (1 + decay * step).
        settings["learning_rate"] = keras.optimizers.schedules.InverseTimeDecay(settings["learning_rate"], decay_steps=1, decay_rate=decay)
    if lr_decay:
        if total_steps < 1:
            raise ValueError("train.lr_decay needs the run's total_steps")
        settings["learning_rate"] = LinearDecayTail(settings["learning_rate"], total_steps, lr_decay)
    kind = keras.optimizers.Adam if optimizer.name == "adam" else keras.optimizers.RMSprop
    return kind(**settings, name=f"{network}_{optimizer.name}")


def seed_everything(config: Config) -> None:
    set_global_seed(config.train.seed)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()


def build_gan(config: Config, manifest: dict, total_steps: int) -> GAN:
    """The compiled GAN, its networks built under ``train.precision`` (outputs stay float32),
    its optimizers scheduled for a run of ``total_steps`` steps."""
    precision = set_precision(config.train.precision)

    def optimizer(network: str) -> keras.optimizers.Optimizer:
        inner = make_optimizer(config.optimizer, network, config.train.lr_decay, total_steps)
        return inner if precision == "fp32" else SkipNonFiniteSteps(inner, scaling=precision == "mixed_float16")

    with distribution(config.train.strategy).scope():
        generator, discriminator = models.build(config.model, tuple(manifest["image_shape"]), manifest["normalization"]["range"])
        gan = GAN(generator, discriminator, config.model.latent_dim, seed=config.train.seed, label_noise=config.train.label_noise,
                  label_smoothing=config.train.label_smoothing, ema_decay=config.train.ema_decay,
                  joint_batch=config.model.d_joint_batch, r1_gamma=config.train.r1_gamma, r1_interval=config.train.r1_interval)
        gan.compile(
            d_optimizer=optimizer("discriminator"),
            g_optimizer=optimizer("generator"),
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
    ``train.interval`` that many steps, with ``train.interval_epochs`` that many passes;
    ``train.iterations`` replaces ``train.epochs``."""

    steps_per_epoch: int
    epochs: int

    @classmethod
    def of(cls, config: Config, train_count: int, prepared: Path) -> "Schedule":
        train = config.train
        per_pass = train_count // train.batch_size
        if per_pass == 0:
            raise UserError(f"config key train.batch_size: {train.batch_size} exceeds the {train_count} training images in {prepared}")
        interval = train.interval or (train.interval_epochs or 1) * per_pass
        total = train.iterations or train.epochs * per_pass
        if total % interval:
            key = "train.iterations" if train.iterations else "train.epochs"
            setting = "train.interval" if train.interval else "train.interval_epochs"
            raise UserError(f"config key {setting}: {interval} steps do not divide the {total} steps of {key}")
        return cls(interval, total // interval)


def _differences(old: dict, new: dict) -> list[str]:
    return sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))


def _resume_state(checkpoints: CheckpointDir, identity: dict, config: Config, schedule: Schedule) -> RunState | None:
    """The checkpoint state to resume, or None to start over (clearing a stale checkpoint).

    A checkpoint of other settings is replaced (``dvc exp run -S ...`` just works), but one of
    the same settings on changed prepared data is refused: that is never silently resumed.
    """
    state = checkpoints.load_state()
    resume = config.train.resume
    if state is None or state.checkpoint is None:
        if resume == "always":
            raise UserError(f"config key train.resume: always, but there is no checkpoint in {checkpoints.folder}")
        return None
    changed = _differences(state.identity, identity)
    if resume == "never":
        log.info("train.resume=never: discarding the checkpoint in %s", checkpoints.folder)
    elif changed == ["data.manifest_sha256"]:
        raise UserError(
            f"{checkpoints.folder}: the checkpoint was trained on other data (the prepared dataset's manifest "
            f"changed since: sha256 {state.identity[changed[0]][:12]} -> {identity[changed[0]][:12]}); "
            "rerun with train.resume=never to start over on the new data"
        )
    elif changed and resume == "always":
        key = changed[0]
        raise UserError(
            f"config key {key}: {identity.get(key)!r} does not match the checkpoint in {checkpoints.folder} "
            f"({state.identity.get(key)!r}" + (f"; {len(changed) - 1} more keys differ" if len(changed) > 1 else "") + ")"
        )
    elif changed:
        log.warning("checkpoint in %s is from a different run (differs in: %s); starting over", checkpoints.folder, ", ".join(changed))
    elif state.step > schedule.epochs * schedule.steps_per_epoch:
        log.warning("checkpoint in %s is past the requested training length; starting over", checkpoints.folder)
    else:
        return state
    checkpoints.clear()
    return None


def _progress_scorer(config: Config, prepared: Path, manifest: dict) -> Scorer | None:
    if not config.metrics.every:
        return None
    space = quality.feature_space(config, prepared, manifest)
    return None if space is None else Scorer(space, config, prepared, manifest, config.metrics.train_samples)


def train(config: Config) -> dict:
    """Train (or resume) the configured GAN; returns the final epoch's metrics."""
    split_cpu(config.train.cpu_devices)  # before TensorFlow starts
    models.architecture_for(config.model, config.data.image_shape)  # a wrong size fails before preparing data
    tracking.connect(config)  # before any work: an unusable store fails in seconds
    out = outputs_of(config)
    check_writable(out.models_dir, out.reports_dir)
    prepared, manifest = prepared_dataset(config)
    schedule = Schedule.of(config, manifest["splits"]["train"]["count"], prepared)
    scorer = _progress_scorer(config, prepared, manifest)  # may train the classifier: before seeding

    seed_everything(config)
    total_steps = schedule.epochs * schedule.steps_per_epoch
    gan = build_gan(config, manifest, total_steps)
    identity = {**run_identity(config), "data.manifest_sha256": manifest_sha256(prepared)}
    if config.train.lr_decay:  # the learning rates depend on the run's length: a longer run is another run
        identity["train.total_steps"] = total_steps
    checkpoints = CheckpointDir(out.checkpoints, config.train.keep_checkpoints)
    state = _resume_state(checkpoints, identity, config, schedule)
    if state is not None:
        checkpoints.restore(gan.state_variables(), state)
        log.info("resuming from %s after epoch %d", checkpoints.folder / state.checkpoint, state.epoch)
    else:
        state = RunState(identity=identity)
        shutil.rmtree(out.samples, ignore_errors=True)
        out.best_generator.unlink(missing_ok=True)

    noise = np.random.default_rng(config.train.sample_seed).standard_normal(
        (config.train.sample_grid**2 + config.metrics.train_samples, config.model.latent_dim)
    ).astype(np.float32)
    grid_noise, scoring_noise = noise[: config.train.sample_grid**2], noise[config.train.sample_grid**2 :]
    with tracking.start_run(config, state.mlflow_run_id) as run, StopSignals() as stop:
        if state.mlflow_run_id is None:
            state.mlflow_run_id = run.info.run_id
            mlflow.log_dict(manifest, "data/manifest.json")  # with the raw files' SHA-256
            mlflow.log_dict(to_dict(config), "config.yaml")  # the full resolved config
            mlflow.set_tag("data.manifest_sha256", identity["data.manifest_sha256"])
            _log_architecture(gan)
        write_json(out.run_info, {"mlflow_run_id": run.info.run_id, "tracking_uri": mlflow.get_tracking_uri()})
        # A round cut short by a stop signal continues with its loss means so far.
        mid_round = state.step > state.epoch * schedule.steps_per_epoch
        throughput = Throughput(config.train.batch_size)
        callbacks = [
            throughput,
            SampleGrid(grid_noise, config.train.sample_grid, manifest, out.samples),
            *([QualityMonitor(scorer, scoring_noise, config.metrics.every, schedule.epochs)] if scorer else []),
            MLflowMetrics(),
            Checkpointer(checkpoints, state, out.history, schedule.steps_per_epoch, stop, out.best_generator,
                         [v.numpy() for v in gan.metrics_variables] if mid_round else None),
        ]
        try:
            _fit(gan, config, prepared, manifest, schedule, state, callbacks)
        except Interrupted:
            mlflow.end_run("KILLED")
            raise
        last = state.history[-1]
        summary = {f"best_{k}": v for k, v in (state.best or {}).items()}
        if throughput.step_seconds:  # this invocation trained (it may have found the run complete)
            summary["overhead"] = round(throughput.overhead, 6)
        save_model(gan.sampler, out.generator)
        save_model(standard_copy(gan.discriminator), out.discriminator)
        if state.best is None:  # no in-training FID (metrics.every=0, unlabelled data): the last stands in
            save_model(gan.sampler, out.best_generator)
        final = {**last, **summary}
        write_json(out.metrics, final)
        mlflow.log_metrics({**{f"final_{k}": v for k, v in last.items() if k not in ("epoch", "iteration")}, **summary})
        tracking.log_generator(gan.sampler, config.model.latent_dim, final["epoch"])
    return final


def _fit(gan: GAN, config: Config, prepared: Path, manifest: dict, schedule: Schedule, state: RunState, callbacks: list) -> None:
    """Run the rounds still to do; a round that a stop signal cut short is finished first,
    as a ``fit`` of its remaining steps, so every step sees the data it would have seen."""
    steps = schedule.steps_per_epoch
    segments = [(schedule.epochs, steps)]
    if state.step > state.epoch * steps:
        segments.insert(0, (state.epoch + 1, (state.epoch + 1) * steps - state.step))
    for epochs, steps_per_epoch in segments:
        if state.epoch >= epochs:
            continue
        dataset = training_dataset(
            prepared, manifest, config.train.batch_size, config.train.seed, config.train.shuffle_buffer, state.step
        )
        gan.fit(
            dataset,
            epochs=epochs,
            initial_epoch=state.epoch,
            steps_per_epoch=steps_per_epoch,
            shuffle=False,  # the dataset shuffles itself, reproducibly per pass
            callbacks=callbacks,
            verbose=1 if sys.stdout.isatty() else 2,
        )
