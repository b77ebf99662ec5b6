"""The train stage: prepared TFRecords -> trained GAN, checkpoints, grids and an MLflow run."""

from __future__ import annotations

import io
import json
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
from dcgan.callbacks import Checkpointer, MLflowMetrics, QualityMonitor, SampleGrid, StopSignals, Throughput, write_history
from dcgan.checkpoints import START_OVER, CheckpointDir, RunState
from dcgan.config import Config, OptimizerConfig, run_identity, scoring_identity, to_dict
from dcgan.data.pipeline import training_dataset
from dcgan.data.tfrecords import manifest_sha256
from dcgan.devices import distribution, set_global_seed, split_cpu
from dcgan.errors import Interrupted, UserError
from dcgan.files import check_writable, copy_file, locked, save_model, write_json
from dcgan.gan import GAN, SkipNonFiniteSteps
from dcgan.models.layers import standard_copy
from dcgan.paths import TrainOutputs, outputs_of
from dcgan.precision import resolve_precision, set_precision
from dcgan.quality import Scorer, generate
from dcgan.data.prepare import prepared_dataset

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
    precision = set_precision(config.train.precision).policy

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


DATA_DIGEST = "data.content_sha256"


def _differences(old: dict, new: dict) -> list[str]:
    return sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))


def _why_start_over(state: RunState, identity: dict, config: Config, total_steps: int, folder: Path) -> str | None:
    """Why the checkpoint ``state`` cannot be resumed (None: resume it). Refuses (raises)
    where starting over would discard work the user may not mean to lose."""
    changed = _differences(state.identity, identity)
    resume = config.train.resume
    if resume == "never":
        return f"train.resume=never: discarding the checkpoint in {folder}"
    if changed == [DATA_DIGEST]:
        raise UserError(
            f"{folder}: the checkpoint was trained on other data (the prepared data's content changed since: "
            f"sha256 {str(state.identity.get(DATA_DIGEST))[:12]} -> {identity[DATA_DIGEST][:12]}); "
            "rerun with train.resume=never to start over on the new data"
        )
    if changed and resume == "always":
        key = changed[0]
        raise UserError(
            f"config key {key}: {identity.get(key)!r} does not match the checkpoint in {folder} "
            f"({state.identity.get(key)!r}" + (f"; {len(changed) - 1} more keys differ" if len(changed) > 1 else "") + ")"
        )
    if changed in ([], ["train.total_steps"]) and state.step > total_steps:
        raise UserError(
            f"{folder}: holds a run trained for {state.step} steps ({state.epoch} rounds), more than the {total_steps} "
            f"asked for (train.epochs / train.iterations); ask for at least {state.step} steps to keep it, or {START_OVER} (discarding it)"
        )
    if changed:
        return f"checkpoint in {folder} is from a different run (differs in: {', '.join(changed)}); starting over"
    return None


def _recorded_run_id(run_info: Path) -> str | None:
    try:
        return json.loads(run_info.read_text()).get("mlflow_run_id")
    except (OSError, ValueError, AttributeError):
        return None


def _resume_or_start(checkpoints: CheckpointDir, identity: dict, config: Config, total_steps: int, gan: GAN, out: TrainOutputs) -> RunState:
    """The run to continue, its weights restored into ``gan``, or a fresh one. Starting over
    discards the old checkpoint, grids and best generator and marks the MLflow run of a
    killed process KILLED (this process holds the folder's lock: nothing else runs it)."""
    try:
        state = checkpoints.load_state()
    except UserError:
        if config.train.resume != "never":
            raise
        state = None
    if state is not None and state.checkpoint is not None:
        reason = _why_start_over(state, identity, config, total_steps, checkpoints.folder)
        if reason is None:
            state = checkpoints.restore(gan.state_variables(), state)
            log.info("resuming from %s after epoch %d", checkpoints.folder / state.checkpoint, state.epoch)
            return state
        log.warning(reason)
    elif config.train.resume == "always":
        raise UserError(f"config key train.resume: always, but there is no checkpoint in {checkpoints.folder}")
    for run_id in {state.mlflow_run_id if state else None, _recorded_run_id(out.run_info)}:
        tracking.end_abandoned_run(run_id)
    checkpoints.clear()
    shutil.rmtree(out.samples, ignore_errors=True)
    out.best_generator.unlink(missing_ok=True)
    return RunState(identity=identity)


def _rescore(state: RunState, scoring: dict, gan: GAN, scorer: Scorer | None, noise: np.ndarray, checkpoints: CheckpointDir, complete: bool) -> None:
    """After a change of metrics.*: score the best generator (and, for a run with nothing
    left to train, the last) again, so the best round and the final scores are current;
    the earlier rounds' rows in the history keep the scores of their time."""
    changed = ", ".join(_differences(state.scoring, scoring))
    if scorer is None:
        log.warning("metrics settings changed since the checkpoint (%s); with no in-training scores now, "
                    "the history keeps its old ones", changed)
        return
    log.warning("metrics settings changed since the checkpoint (%s): rescoring the best%s generator; "
                "earlier rows of the history keep their old scores", changed, " and the last" if complete else "")
    if state.best is not None and checkpoints.best_generator.is_file():
        best = keras.models.load_model(checkpoints.best_generator, compile=False)
        state.best["fid"] = round(scorer.score(generate(best, noise))["fid"], 6)
    if complete:
        last = state.history[-1]
        last.update({key: round(value, 6) for key, value in scorer.score(generate(gan.sampler, noise)).items()})
        if state.best is None or last["fid"] < state.best["fid"]:
            save_model(gan.sampler, checkpoints.best_generator)
            state.best = {"epoch": last["epoch"], "fid": last["fid"]}


def train(config: Config) -> dict:
    """Train (or resume) the configured GAN; returns the final epoch's metrics."""
    split_cpu(config.train.cpu_devices)  # before TensorFlow starts
    models.architecture_for(config.model, config.data.image_shape)  # a wrong size fails before preparing data
    tracking.connect(config)  # before any work: an unusable store fails in seconds
    out = outputs_of(config)
    check_writable(out.models_dir, out.reports_dir, out.checkpoints, out.samples)
    with locked(out.models_dir):
        prepared, manifest = prepared_dataset(config)
        with locked(prepared, shared=True):  # no prepare replaces the data under a training
            return _train(config, out, prepared, manifest)


def _train(config: Config, out: TrainOutputs, prepared: Path, manifest: dict) -> dict:
    schedule = Schedule.of(config, manifest["splits"]["train"]["count"], prepared)
    # In-training scores; may train the domain classifier, so before seeding.
    scorer = quality.scorer_for(config, prepared, manifest, config.metrics.train_samples) if config.metrics.every else None
    precision = resolve_precision(config.train.precision)  # may time a probe once per machine: before seeding

    seed_everything(config)
    total_steps = schedule.epochs * schedule.steps_per_epoch
    gan = build_gan(config, manifest, total_steps)
    identity = {**run_identity(config), DATA_DIGEST: manifest["content_sha256"]}
    if config.train.lr_decay:  # the learning rates depend on the run's length: a longer run is another run
        identity["train.total_steps"] = total_steps
    checkpoints = CheckpointDir(out.checkpoints, config.train.keep_checkpoints)
    state = _resume_or_start(checkpoints, identity, config, total_steps, gan, out)

    noise = np.random.default_rng(config.train.sample_seed).standard_normal(
        (config.train.sample_grid**2 + config.metrics.train_samples, config.model.latent_dim)
    ).astype(np.float32)
    grid_noise, scoring_noise = noise[: config.train.sample_grid**2], noise[config.train.sample_grid**2 :]
    scoring = scoring_identity(config)
    if state.scoring is not None and state.scoring != scoring and state.history:
        _rescore(state, scoring, gan, scorer, scoring_noise, checkpoints, complete=state.step >= total_steps)
    state.scoring = scoring
    with tracking.start_run(config, state.mlflow_run_id) as run, StopSignals() as stop:
        if state.mlflow_run_id != run.info.run_id:
            state.mlflow_run_id = run.info.run_id
            mlflow.log_dict(manifest, "data/manifest.json")  # with the raw files' SHA-256
            mlflow.log_dict(to_dict(config), "config.yaml")  # the full resolved config
            mlflow.set_tag("data.manifest_sha256", manifest_sha256(prepared))
            _log_architecture(gan)
        tracking.log_precision(precision)
        write_json(out.run_info, {"mlflow_run_id": run.info.run_id, "tracking_uri": mlflow.get_tracking_uri()})
        # A round cut short by a stop signal continues with its loss means so far.
        mid_round = state.step > state.epoch * schedule.steps_per_epoch
        throughput = Throughput(config.train.batch_size)
        callbacks = [
            throughput,
            SampleGrid(grid_noise, config.train.sample_grid, manifest, out.samples),
            *([QualityMonitor(scorer, scoring_noise, config.metrics.every, schedule.epochs)] if scorer else []),
            MLflowMetrics(),
            Checkpointer(checkpoints, state, out.history, schedule.steps_per_epoch, stop,
                         [v.numpy() for v in gan.metrics_variables] if mid_round else None),
        ]
        try:
            _fit(gan, config, prepared, manifest, schedule, state, callbacks)
        except Interrupted:
            mlflow.end_run("KILLED")
            raise
        return _write_outputs(gan, state, checkpoints, out, throughput)


def _write_outputs(gan: GAN, state: RunState, checkpoints: CheckpointDir, out: TrainOutputs, throughput: Throughput) -> dict:
    """Every output of the stage, from the model and the persisted state alone (DVC deletes
    the outputs before a rerun, which may find the run complete and train nothing)."""
    last = state.history[-1]
    summary = {f"best_{k}": v for k, v in (state.best or {}).items()}
    if throughput.step_seconds:  # this invocation trained (it may have found the run complete)
        summary["overhead"] = round(throughput.overhead, 6)
    save_model(gan.sampler, out.generator)
    save_model(standard_copy(gan.discriminator), out.discriminator)
    if state.best is not None and checkpoints.best_generator.is_file():
        copy_file(checkpoints.best_generator, out.best_generator)
    else:  # no in-training FID (metrics.every=0, unlabelled data): the last stands in
        save_model(gan.sampler, out.best_generator)
    write_history(out.history, state.history)
    checkpoints.save_state(state)  # the MLflow run and scores as they are now
    final = {**last, **summary}
    write_json(out.metrics, final)
    mlflow.log_metrics({**{f"final_{k}": v for k, v in last.items() if k not in ("epoch", "iteration")}, **summary})
    tracking.log_generator(gan.sampler, gan.latent_dim, final["epoch"])
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
