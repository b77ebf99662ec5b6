"""Resuming a training run, all in one place: the run's epochs, what makes a checkpoint the
same run, the decision to resume or start over, and where a resumed run picks up (its
position in the data, the running means of an epoch cut short).

An epoch is the stretch of steps between two checkpoints and sample grids (Keras'
``steps_per_epoch``): one pass over the data by default, ``train.interval`` steps or
``train.interval_passes`` passes when set.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import keras
import numpy as np

from dcgan import tracking
from dcgan.checkpoints import START_OVER, STATE, CheckpointDir, RunState, local_values
from dcgan.config import Config, MetricsConfig, TrainConfig, run_identity, scoring_identity
from dcgan.errors import UserError
from dcgan.files import locked, replace_together
from dcgan.paths import TrainOutputs
from dcgan.quality import Scorer, samples_of

log = logging.getLogger(__name__)

DATA_DIGEST = "data.content_sha256"
# The identity's keys that set the learning rates: a checkpoint whose steps all took the same
# rates under a new schedule continues into it.
RATES = ("train.lr_decay", "train.total_steps")


@dataclass(frozen=True)
class Schedule:
    """``epochs`` epochs of ``steps_per_epoch`` steps; ``train.iterations`` (steps) replaces
    ``train.epochs`` (passes) as the length."""

    steps_per_epoch: int
    epochs: int

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @classmethod
    def of(cls, train: TrainConfig, train_count: int, prepared: Path) -> "Schedule":
        per_pass = train_count // train.batch_size
        if per_pass == 0:
            raise UserError(
                f"config key train.batch_size: {train.batch_size} exceeds the {train_count} training images in "
                f"{prepared}"
            )
        interval = train.interval or (train.interval_passes or 1) * per_pass
        total = train.iterations or train.epochs * per_pass
        if total % interval:
            key = "train.iterations" if train.iterations else "train.epochs"
            setting = "train.interval" if train.interval else "train.interval_passes"
            raise UserError(f"config key {setting}: {interval} steps do not divide the {total} steps of {key}")
        return cls(interval, total // interval)


def identity_of(config: Config, manifest: dict, schedule: Schedule) -> dict:
    """What a checkpoint must match to be this run: the run-defining settings and the data's
    content (and, with decaying learning rates, the run's length, which sets them)."""
    identity = {**run_identity(config), DATA_DIGEST: manifest["content_sha256"]}
    if config.train.lr_decay:
        identity["train.total_steps"] = schedule.total_steps
    return identity


def resume_or_start(
    mode: str,
    identity: dict,
    schedule: Schedule,
    gan: keras.Model,
    checkpoints: CheckpointDir,
    out: TrainOutputs,
    branch_from: Path | None = None,
) -> RunState:
    """The run to continue, its weights restored into ``gan``, or a fresh one. Starting over
    discards the old checkpoint, grids and best generator and marks the MLflow run of a
    killed process KILLED (this process holds the folder's lock: nothing else runs it); the
    stage's outputs stay until the new run's replace them.

    ``branch_from`` (``train.branch_from``, another run's models folder): a run that does not
    continue a checkpoint of its own starts from that run's latest one instead of from
    scratch, copied in with its best generator as this run's, to go on as a new MLflow run
    (``RunState.branched_from``): several runs can go on from one, as the trials of a search
    over cool-downs do. The other run must be this run, or this run under a schedule whose
    rates its steps all took, as for resuming."""
    try:
        state = checkpoints.load_state()
    except UserError:
        if mode != "never":
            raise
        state = None
    if state is not None and state.checkpoint is not None:
        reason = _why_start_over(state, identity, mode, schedule.total_steps, checkpoints.folder)
        if reason is None:
            return _continue(state, identity, schedule, gan, checkpoints)
        log.warning(reason)
    elif mode == "always" and branch_from is None:
        raise UserError(f"config key train.resume: always, but there is no checkpoint in {checkpoints.folder}")
    # The other run's checkpoints sit in its models folder where this run's sit in its own.
    source = branch_from / checkpoints.folder.name if branch_from else None
    if source and not (source / STATE).is_file():
        raise UserError(f"config key train.branch_from: {branch_from} holds no training checkpoint ({source / STATE})")
    with locked(branch_from, shared=True) if source else contextlib.nullcontext():  # the other run stays put
        branched = _branch_source(source, identity, schedule) if source else None
        for run_id in {state.mlflow_run_id if state else None, _recorded_run_id(out.run_info)}:
            tracking.end_abandoned_run(run_id)
        checkpoints.clear()
        shutil.rmtree(out.samples, ignore_errors=True)
        if branched is None:
            return RunState(identity=identity)
        state = _copy_in(*branched, checkpoints)
    return _continue(state, identity, schedule, gan, checkpoints)


def _continue(
    state: RunState, identity: dict, schedule: Schedule, gan: keras.Model, checkpoints: CheckpointDir
) -> RunState:
    """Restore the checkpoint ``state`` names into ``gan``, as the run ``identity``."""
    if state.identity != identity:
        start = _decay_start(identity)
        log.info(
            "the checkpoint's %d steps took the learning rates train.lr_decay=%s gives them: continuing%s",
            state.step,
            identity["train.lr_decay"],
            f" (both rates fall from step {start:.0f} of {schedule.total_steps})" if start < math.inf else "",
        )
    state = checkpoints.restore(gan.state_variables(), state)
    state.identity = identity
    log.info(
        "resuming from %s after epoch %d (step %d)", checkpoints.folder / state.checkpoint, state.epochs, state.step
    )
    return state


def _branch_source(folder: Path, identity: dict, schedule: Schedule) -> tuple[CheckpointDir, RunState]:
    """Another run's checkpoint folder and its state, if this run can go on from it; else a
    one-line error naming ``train.branch_from``."""
    other = CheckpointDir(folder, keep=1)
    state = other.load_state()
    if state.checkpoint is None:
        raise UserError(f"config key train.branch_from: {folder} holds no checkpoint yet (its first epoch runs)")
    _why_start_over(state, identity, "always", schedule.total_steps, other.folder)
    return other, state


def _copy_in(other: CheckpointDir, state: RunState, checkpoints: CheckpointDir) -> RunState:
    """The latest checkpoint of ``other`` (and its best generator) as this run's first."""
    copies = {checkpoints.folder / state.checkpoint: other.folder / state.checkpoint}
    best = other.best_generator(state)
    if best is not None and best.is_file():
        copies[checkpoints.folder / best.name] = best
    replace_together({copy: partial(shutil.copyfile, original) for copy, original in copies.items()})
    state.branched_from, state.mlflow_run_id = state.mlflow_run_id, None
    checkpoints.save_state(state)
    log.info("branching from %s after epoch %d (step %d)", other.folder / state.checkpoint, state.epochs, state.step)
    return state


def _differences(old: dict, new: dict) -> list[str]:
    return sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))


def _why_start_over(state: RunState, identity: dict, mode: str, total_steps: int, folder: Path) -> str | None:
    """Why the checkpoint ``state`` cannot be resumed under ``train.resume`` ``mode`` (None:
    resume it). Refuses (raises) where starting over would discard work the user may not mean
    to lose."""
    changed = _differences(state.identity, identity)
    schedule_only = set(changed) <= set(RATES)
    if schedule_only and state.step <= min(_decay_start(state.identity), _decay_start(identity)):
        changed = []  # every step so far took the rates the new schedule gives it: the same run
    hint = _continuing_share(state, total_steps) if schedule_only else ""
    if mode == "never":
        return f"train.resume=never: discarding the checkpoint in {folder}"
    if changed == [DATA_DIGEST]:
        raise UserError(
            f"{folder}: the checkpoint was trained on other data (the prepared data's content changed since: "
            f"sha256 {str(state.identity.get(DATA_DIGEST))[:12]} -> {identity[DATA_DIGEST][:12]}); "
            "rerun with train.resume=never to start over on the new data"
        )
    if changed and mode == "always":
        key = changed[0]
        raise UserError(
            f"config key {key}: {identity.get(key)!r} does not match the checkpoint in {folder} "
            f"({state.identity.get(key)!r}"
            + (f"; {len(changed) - 1} more keys differ" if len(changed) > 1 else "")
            + ")"
            + hint
        )
    if changed in ([], ["train.total_steps"]) and state.step > total_steps:
        raise UserError(
            f"{folder}: holds a run trained for {state.step} steps ({state.epochs} epochs), more than the "
            f"{total_steps} "
            f"asked for (train.epochs / train.iterations); ask for at least {state.step} steps to keep it, or "
            f"{START_OVER} (discarding it)"
        )
    if changed:
        return (
            f"checkpoint in {folder} is from a different run (differs in: {', '.join(changed)}); starting over" + hint
        )
    return None


def _decay_start(identity: dict) -> float:
    """The step from which the learning rates of the run ``identity`` describes fall
    (``LinearDecayTail``); infinite for constant rates."""
    share = identity.get("train.lr_decay") or 0.0
    return identity["train.total_steps"] * (1.0 - share) if share else math.inf


def _continuing_share(state: RunState, total_steps: int) -> str:
    """For a checkpoint that differs only in its schedule: if it took constant rates so far,
    the largest ``train.lr_decay`` that continues it."""
    share = math.floor((1.0 - state.step / total_steps) * 1e4) / 1e4
    if state.step > _decay_start(state.identity) or share <= 0:
        return ""
    return f"; train.lr_decay <= {share} continues it (its {state.step} steps took constant rates)"


def _recorded_run_id(run_info: Path) -> str | None:
    try:
        return json.loads(run_info.read_text()).get("mlflow_run_id")
    except (OSError, ValueError, AttributeError):
        return None


def rescore_if_changed(
    metrics: MetricsConfig,
    state: RunState,
    schedule: Schedule,
    gan: keras.Model,
    scorer: Scorer | None,
    noise: np.ndarray,
    checkpoints: CheckpointDir,
) -> None:
    """After a change of metrics.*: score the best generator (and, for a run with nothing
    left to train, the last) again, so the best epoch and the final scores are current;
    the earlier epochs' rows in the history keep the scores of their time."""
    scoring = scoring_identity(metrics)
    previous, state.scoring = state.scoring, scoring
    if previous is None or previous == scoring or not state.history:
        return
    changed = ", ".join(_differences(previous, scoring))
    if scorer is None:
        log.warning(
            "metrics settings changed since the checkpoint (%s); with no in-training scores now, "
            "the history keeps its old ones",
            changed,
        )
        return
    complete = state.step >= schedule.total_steps
    log.warning(
        "metrics settings changed since the checkpoint (%s): rescoring the best%s generator; "
        "earlier rows of the history keep their old scores",
        changed,
        " and the last" if complete else "",
    )
    best = checkpoints.best_generator(state)
    if best is not None and best.is_file():
        best_generator = keras.models.load_model(best, compile=False)
        state.best["fid"] = round(scorer.score(samples_of(best_generator, noise))["fid"], 6)
    if complete:
        last = state.history[-1]
        last.update({key: round(value, 6) for key, value in scorer.score(samples_of(gan.sampler, noise)).items()})
        if state.best is None or last["fid"] < state.best["fid"]:
            checkpoints.save_best(gan.sampler, state, last["epoch"], last["fid"])


def cut_short(state: RunState, schedule: Schedule) -> bool:
    """Whether a stop signal ended the last invocation inside an epoch."""
    return state.step > state.epochs * schedule.steps_per_epoch


def epoch_means(gan: keras.Model, state: RunState, schedule: Schedule) -> list | None:
    """The restored loss trackers' totals of an epoch cut short, which the epoch's restart
    must put back after Keras resets them (so its means cover all its steps); else None."""
    return local_values(gan.metrics_variables) if cut_short(state, schedule) else None


def fit_calls(state: RunState, schedule: Schedule) -> list[tuple[int, int]]:
    """The ``fit`` calls still to make, as (epochs to reach, steps per epoch); an epoch cut
    short is finished first by a ``fit`` of its remaining steps, so every step sees the data
    it would have seen. A call whose epochs are done by the time it comes is skipped."""
    calls = [(schedule.epochs, schedule.steps_per_epoch)]
    if cut_short(state, schedule):
        calls.insert(0, (state.epochs + 1, (state.epochs + 1) * schedule.steps_per_epoch - state.step))
    return calls
