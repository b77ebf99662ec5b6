"""The train stage: prepared TFRecords -> trained GAN, checkpoints, grids and an MLflow run."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import shutil
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Iterator

import keras
import mlflow
import numpy as np
import tensorflow as tf

from dcgan import models, multi_worker, quality, resume, search, tracking, viz
from dcgan.callbacks import (
    HISTORY_KEYS,
    Checkpointer,
    DivergenceGuard,
    MLflowMetrics,
    QualityMonitor,
    SampleGrid,
    Throughput,
    epoch_logs,
)
from dcgan.checkpoints import CheckpointDir, RunState, assign_locally, local_values
from dcgan.config import PRECISIONS, Config, OptimizerConfig, to_dict
from dcgan.data.pipeline import training_dataset
from dcgan.data.prepare import prepared_dataset
from dcgan.data.tfrecords import load_manifest, manifest_sha256
from dcgan.errors import Interrupted
from dcgan.files import check_writable, json_text, locked, replace_together
from dcgan.gan import GAN, SkipNonFiniteSteps
from dcgan.models.layers import standard_copy
from dcgan.paths import TrainOutputs, outputs_of
from dcgan.precision import resolve_precision, set_precision
from dcgan.resume import Schedule
from dcgan.runtime import distribution, limit_threads, set_global_seed, split_cpu
from dcgan.signals import StopSignals, stop_signals

log = logging.getLogger(__name__)


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


def make_optimizer(
    optimizer: OptimizerConfig, network: str, lr_decay: float = 0.0, total_steps: int = 0
) -> keras.optimizers.Optimizer:
    """The configured optimizer of ``network``; with ``lr_decay`` its learning rate decays
    over the last ``lr_decay`` share of ``total_steps``."""
    settings = dict(vars(getattr(optimizer, network)))
    decay = settings.pop("decay", 0.0)
    if decay:
        # Keras 2's `decay` argument, as the Keras 3 schedule computing the same lr / (1 + decay * step).
        settings["learning_rate"] = keras.optimizers.schedules.InverseTimeDecay(
            settings["learning_rate"], decay_steps=1, decay_rate=decay
        )
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


def build_gan(config: Config, manifest: dict, total_steps: int, strategy: tf.distribute.Strategy | None = None) -> GAN:
    """The compiled GAN, its networks built under ``train.precision`` (outputs stay float32)
    in ``strategy``'s scope (default: one device), its optimizers scheduled for a run of
    ``total_steps`` steps."""
    precision = set_precision(config.train.precision).policy

    def optimizer(network: str) -> keras.optimizers.Optimizer:
        inner = make_optimizer(config.optimizer, network, config.train.lr_decay, total_steps)
        return inner if precision == "fp32" else SkipNonFiniteSteps(inner, scaling=precision == "mixed_float16")

    with (strategy or tf.distribute.get_strategy()).scope():
        generator, discriminator = models.build(
            config.model, tuple(manifest["image_shape"]), manifest["normalization"]["range"]
        )
        gan = GAN(
            generator,
            discriminator,
            config.model.latent_dim,
            seed=config.train.seed,
            label_noise=config.train.label_noise,
            label_smoothing=config.train.label_smoothing,
            ema_decay=config.train.ema_decay,
            joint_batch=config.model.d_joint_batch,
            r1_gamma=config.train.r1_gamma,
            r1_interval=config.train.r1_interval,
            augment=config.train.augment,
        )
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


def train(config: Config) -> dict:
    """Train (or resume) the configured GAN; returns the last epoch's metrics."""
    split_cpu(config.train.cpu_devices)  # both before TensorFlow starts
    limit_threads(config.train.threads)
    models.architecture_for(config.model, config.data.image_shape)  # a wrong size fails before preparing data
    cluster = None
    if config.train.strategy == "multi_worker":
        cluster = multi_worker.cluster_from_environment()
        multi_worker.check_shards(Path(config.paths.prepared_dir) / config.data.name, cluster.workers)
        if not cluster.is_chief:
            return _train_in_step_with_chief(config, cluster)
    tracking.connect(config.tracking)  # before any work: an unusable store fails in seconds
    out = outputs_of(config.paths)
    check_writable(out.models_dir, out.reports_dir, out.checkpoints, out.samples)
    # Before any TensorFlow op, and before the stop signals are caught: waiting for the other
    # workers, a stop must end the process.
    strategy = distribution(config.train.strategy, cluster, config.train.cluster_timeout)
    with locked(out.models_dir), stop_signals as stop:
        prepared, manifest = prepared_dataset(config.data, config.paths)
        with locked(prepared, shared=True):  # no prepare replaces the data under a training
            with tracking.store_outage_is_user_error(), _lost_workers_are_user_errors(cluster):
                return _train(config, out, prepared, manifest, stop, strategy, cluster)


@contextlib.contextmanager
def _lost_workers_are_user_errors(cluster: multi_worker.Cluster | None) -> Iterator[None]:
    try:
        yield
    except tf.errors.OpError as exc:
        lost = multi_worker.lost_worker(exc, cluster) if cluster else None
        if lost is None:
            raise
        multi_worker.close_abandoned_thread_pools()
        raise lost from None


def _train(
    config: Config,
    out: TrainOutputs,
    prepared: Path,
    manifest: dict,
    stop: StopSignals,
    strategy: tf.distribute.Strategy,
    cluster: multi_worker.Cluster | None,
) -> dict:
    schedule = Schedule.of(config.train, manifest["splits"]["train"]["count"], prepared)
    # Both may take a while once (the domain classifier, a precision probe): before seeding.
    scorer = (
        quality.scorer_for(
            config.metrics, config.paths.classifier_dir, prepared, manifest, config.metrics.train_samples
        )
        if config.metrics.every
        else None
    )
    precision = resolve_precision(config.train.precision)
    _agree_on_precision(config, strategy)

    seed_everything(config)
    gan = build_gan(config, manifest, schedule.total_steps, strategy)
    checkpoints = CheckpointDir(out.checkpoints, config.train.keep_checkpoints)
    state = resume.resume_or_start(
        config.train.resume,
        resume.identity_of(config, manifest, schedule),
        schedule,
        gan,
        checkpoints,
        out,
        Path(config.train.branch_from) if config.train.branch_from else None,
    )
    if state.branched_from:
        config.tracking.tags.setdefault(tracking.BRANCHED_FROM_TAG, state.branched_from)
    _share_chief_state(strategy, gan, state)
    grid_noise, scoring_noise = _fixed_noise(config)
    resume.rescore_if_changed(config.metrics, state, schedule, gan, scorer, scoring_noise, checkpoints)
    stop.check("stopped before training; rerun the same command")

    with tracking.start_run(config, state.mlflow_run_id) as run:
        if state.mlflow_run_id != run.info.run_id:
            state.mlflow_run_id = run.info.run_id
            checkpoints.save_state(state)  # so that a kill before the first checkpoint still ends this run
            _log_run_inputs(config, manifest, prepared, gan)
            for row in state.history:  # epochs trained before, under another MLflow run (a branch)
                mlflow.log_metrics(epoch_logs(row), step=row["epoch"])
        tracking.log_precision(precision)
        if cluster:
            mlflow.set_tag("train.workers", cluster.workers)
        throughput = Throughput(config.train.batch_size)
        trial = search.ReportToStudy(config.search) if config.search.trial is not None else None
        logged = tracking.logged_epochs(run.info.run_id)
        callbacks = [
            throughput,
            DivergenceGuard(checkpoints, state, grid_noise),
            SampleGrid(grid_noise, config.train.sample_grid, manifest, out.samples, logged),
            *([QualityMonitor(scorer, scoring_noise, config.metrics.every, schedule.epochs)] if scorer else []),
            MLflowMetrics(logged),
            Checkpointer(checkpoints, state, schedule.steps_per_epoch, stop, resume.epoch_means(gan, state, schedule)),
            *([trial] if trial else []),  # after the epoch is committed: a pruned trial keeps it
        ]
        try:
            _fit(gan, config, prepared, manifest, schedule, state, callbacks)
        except Interrupted:
            mlflow.end_run("KILLED")
            raise
        final = _write_outputs(gan, state, checkpoints, out, throughput)
        return {**final, "pruned": trial.pruned} if trial else final


def _train_in_step_with_chief(config: Config, cluster: multi_worker.Cluster) -> dict:
    """A multi_worker training's other workers: the same steps on their own data, from the
    chief's precision, weights and position; nothing written. Returns the last epoch's logs."""
    strategy = distribution(config.train.strategy, cluster, config.train.cluster_timeout)
    with _lost_workers_are_user_errors(cluster):
        prepared = Path(config.paths.prepared_dir) / config.data.name
        manifest = load_manifest(prepared)
        schedule = Schedule.of(config.train, manifest["splits"]["train"]["count"], prepared)
        _agree_on_precision(config, strategy)
        seed_everything(config)
        gan = build_gan(config, manifest, schedule.total_steps, strategy)
        state = RunState(identity={})
        _share_chief_state(strategy, gan, state)
        history = keras.callbacks.History()
        _fit(gan, config, prepared, manifest, schedule, state, [history])
    return {key: float(values[-1]) for key, values in history.history.items()}


def _agree_on_precision(config: Config, strategy: tf.distribute.Strategy) -> None:
    """Under multi_worker, every worker trains in the chief's precision (``auto`` may choose
    differently on other machines)."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        own = PRECISIONS.index(resolve_precision(config.train.precision).policy)
        config.train.precision = PRECISIONS[int(multi_worker.from_chief(strategy, [np.array(own)])[0])]


def _share_chief_state(strategy: tf.distribute.Strategy, gan: GAN, state: RunState) -> None:
    """Under multi_worker, every worker continues from the chief's weights and position (only
    the chief has the checkpoints)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    position, *values = multi_worker.from_chief(
        strategy, [np.array([state.step, state.epochs]), *local_values(gan.state_variables())]
    )
    state.step, state.epochs = (int(number) for number in position)
    assign_locally(gan.state_variables(), values)


def _fixed_noise(config: Config) -> tuple[np.ndarray, np.ndarray]:
    """The latent points behind every sample grid and every in-training score of the run."""
    grid_size = config.train.sample_grid**2
    noise = (
        np.random.default_rng(config.train.sample_seed)
        .standard_normal((grid_size + config.metrics.train_samples, config.model.latent_dim))
        .astype(np.float32)
    )
    return noise[:grid_size], noise[grid_size:]


def _log_run_inputs(config: Config, manifest: dict, prepared: Path, gan: GAN) -> None:
    """What a new MLflow run records once: the data manifest (with the raw files' SHA-256)
    and the data as its dataset input, the full resolved config and both architectures."""
    mlflow.log_dict(manifest, "data/manifest.json")
    mlflow.log_dict(to_dict(config), "config.yaml")
    digest = manifest_sha256(prepared)
    mlflow.set_tag("data.manifest_sha256", digest)
    tracking.log_training_data(config.data.name, prepared, manifest, digest)
    _log_architecture(gan)


def _write_outputs(
    gan: GAN, state: RunState, checkpoints: CheckpointDir, out: TrainOutputs, throughput: Throughput
) -> dict:
    """Every output of the stage, from the model and the persisted state alone (a rerun may
    find the run complete and train nothing), replaced as one set: until then the previous
    outputs stay as they were (DVC keeps them: they persist)."""
    last = state.history[-1]
    summary = {f"best_{k}": v for k, v in (state.best or {}).items() if k != "file"}
    if throughput.step_seconds:  # this invocation trained (it may have found the run complete)
        summary["overhead"] = round(throughput.overhead, 6)
    final = {**last, **summary}
    best = checkpoints.best_generator(state)
    run_record = {"mlflow_run_id": state.mlflow_run_id, "tracking_uri": mlflow.get_tracking_uri()}
    replace_together(
        {
            out.generator: gan.sampler.save,
            out.discriminator: standard_copy(gan.discriminator).save,
            # no in-training FID (metrics.every=0, unlabelled data): the last stands in
            out.best_generator: partial(shutil.copyfile, best)
            if best is not None and best.is_file()
            else gan.sampler.save,
            out.history: lambda path: path.write_text(_history_csv(state.history)),
            out.metrics: lambda path: path.write_text(json_text(final)),
            out.run_info: lambda path: path.write_text(json_text(run_record)),
        }
    )
    checkpoints.save_state(state)  # the MLflow run and scores as they are now
    mlflow.log_metrics({**{f"final_{k}": v for k, v in last.items() if k not in ("epoch", "iteration")}, **summary})
    tracking.log_generator(gan.sampler, gan.latent_dim, final["epoch"])
    return final


def _fit(
    gan: GAN, config: Config, prepared: Path, manifest: dict, schedule: Schedule, state: RunState, callbacks: list
) -> None:
    """Run the epochs still to do, the data read from the step reached."""
    for epochs, steps_per_epoch in resume.fit_calls(state, schedule):
        if state.epochs >= epochs:
            continue
        dataset = training_dataset(
            prepared,
            manifest,
            config.train.batch_size,
            config.train.seed,
            config.train.shuffle_buffer,
            state.step,
            gan.distribute_strategy,
        )
        gan.fit(
            dataset,
            epochs=epochs,
            initial_epoch=state.epochs,
            steps_per_epoch=steps_per_epoch,
            shuffle=False,  # the dataset shuffles itself, reproducibly per pass
            callbacks=callbacks,
            verbose=1 if sys.stdout.isatty() else 2,
        )


def _history_csv(history: list[dict]) -> str:
    """The per-epoch metrics as CSV, the file ``dvc plots`` draws."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_KEYS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()
