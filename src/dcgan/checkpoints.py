"""Per-epoch training checkpoints that a rerun resumes from (``dcgan.resume`` decides whether).

A checkpoint is ``ckpt-<step>.npz``: every variable of the model, both optimizers and the
loss trackers (RNG states included, so a resumed run continues exactly) and the run's
state as of that step. ``state.json`` points at the latest complete one and carries the
run's identity, MLflow run id, history and best epoch; ``generator_best-<step>.keras`` is
the generator of that best epoch. Together they are everything a finished run needs to
rebuild its outputs.

Files are only ever added under new names (written to a temp file and renamed into place),
then ``state.json``, the record naming them, is replaced; files no record names any more
are removed after it. So a crash or a full disk at any moment leaves the previous record
and every file it names intact; a checkpoint damaged on disk afterwards is skipped for the
older one that is kept.
"""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from dcgan.errors import UserError
from dcgan.files import atomic_write, atomic_write_text, save_model

log = logging.getLogger(__name__)

STATE = "state.json"
BEST_GENERATOR = "generator_best.keras"  # its name in records of earlier versions, which do not name it
START_OVER = "rerun with train.resume=never to start over"


@dataclass
class RunState:
    """What ``state.json`` records about the run a checkpoint belongs to."""

    identity: dict  # the run-defining settings (config.run_identity) plus the data digest
    epochs: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed; past the last epoch's end after a stop signal
    checkpoint: Optional[str] = None  # file name of the latest complete checkpoint
    mlflow_run_id: Optional[str] = None
    branched_from: Optional[str] = None  # the MLflow run whose checkpoint this run started from
    history: list[dict] = field(default_factory=list)  # one row of metrics per completed epoch
    best: Optional[dict] = None  # {"epoch", "fid", "file"} of the epoch with the lowest in-training FID
    scoring: Optional[dict] = None  # the metrics.* settings the in-training scores were computed with

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"


def _state_from(text: str, source: Path) -> RunState:
    try:
        fields = json.loads(text)
        fields.setdefault("epochs", fields.pop("rounds", fields.pop("epoch", 0)))  # its names until 2026-12-05
        return RunState(**fields)
    except (json.JSONDecodeError, TypeError) as exc:
        raise UserError(f"{source}: unreadable checkpoint state ({str(exc)[:120]}); {START_OVER}") from None


class CheckpointDir:
    def __init__(self, folder: Path, keep: int):
        self.folder = folder
        self.keep = keep

    def best_generator(self, state: RunState) -> Optional[Path]:
        """The best epoch's generator that ``state`` records, if it records one."""
        return self.folder / state.best.get("file", BEST_GENERATOR) if state.best else None

    def save_best(self, generator, state: RunState, epoch: int, fid: float) -> None:
        """Save ``generator`` as the new best under a name of its own and record it in
        ``state`` (in memory: the next ``save``/``save_state`` commits it)."""
        name = f"generator_best-{state.step:09d}.keras"
        save_model(generator, self.folder / name)
        state.best = {"epoch": epoch, "fid": fid, "file": name}

    def load_state(self) -> Optional[RunState]:
        path = self.folder / STATE
        return _state_from(path.read_text(), path) if path.is_file() else None

    def save_state(self, state: RunState) -> None:
        """Replace the record with ``state``, then remove what no kept record names."""
        atomic_write_text(self.folder / STATE, state.to_json())
        for old in sorted(self.folder.glob("ckpt-*.npz"))[: -self.keep]:
            old.unlink()
        named = {self.best_generator(kept) for kept in [state, *self._kept_states()] if kept.best}
        for old in self.folder.glob("generator_best*.keras"):
            if old not in named:
                old.unlink()
        for leftover in self.folder.glob(".*.tmp*"):  # temp files of a killed process (this one holds the lock)
            leftover.unlink(missing_ok=True)

    def save(self, variables: list, state: RunState) -> None:
        name = f"ckpt-{state.step:09d}.npz"
        state.checkpoint = name
        arrays = {f"v{i:04d}": value for i, value in enumerate(local_values(variables))}
        arrays["state"] = np.array(state.to_json())
        atomic_write(self.folder / name, lambda handle: np.savez(handle, **arrays))
        self.save_state(state)

    def _kept_states(self) -> list[RunState]:
        """The states stored in the kept checkpoints, which a fallback to one of them restores
        (so the best generators they name stay); damaged ones are skipped."""
        states = []
        for path in self.folder.glob("ckpt-*.npz"):
            try:
                with np.load(path) as stored:
                    states.append(_state_from(str(stored["state"]), path))
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UserError):
                continue
        return states

    def _read(self, path: Path, count: int) -> tuple[list[np.ndarray], Optional[RunState]]:
        """The arrays of the checkpoint at ``path`` and the state stored with them."""
        with np.load(path) as stored:
            names = sorted(name for name in stored.files if name.startswith("v"))
            if len(names) != count:
                raise UserError(f"{path}: holds {len(names)} variables, the model has {count}; {START_OVER}")
            arrays = [stored[name] for name in names]
            state = _state_from(str(stored["state"]), path) if "state" in stored.files else None
        return arrays, state

    def restore(self, variables: list, state: RunState) -> RunState:
        """Load the checkpoint ``state`` names into ``variables``; if it is damaged, the newest
        older one kept that is intact, whose state is returned instead."""
        newest_first = [self.folder / state.checkpoint] + [
            path for path in sorted(self.folder.glob("ckpt-*.npz"), reverse=True) if path.name < state.checkpoint
        ]
        damage = None
        for path in newest_first:
            try:
                arrays, stored_state = self._read(path, len(variables))
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
                damage = damage or f"{path}: unreadable checkpoint ({type(exc).__name__}: {str(exc)[:100]})"
                log.warning("%s; trying an older checkpoint", damage)
                continue
            if path.name != state.checkpoint:
                if stored_state is None:
                    continue
                state = stored_state
                log.warning("resuming from the older intact checkpoint %s instead", path)
            for variable, array in zip(variables, arrays):
                if tuple(variable.shape) != array.shape:
                    raise UserError(
                        f"{path}: variable {variable.path} has shape {array.shape} in the checkpoint "
                        f"but {tuple(variable.shape)} in the model; {START_OVER}"
                    )
            assign_locally(variables, arrays)
            return state
        raise UserError(f"{damage} and no older intact checkpoint is kept; {START_OVER}")

    def clear(self) -> None:
        for path in [*self.folder.glob("ckpt-*.npz"), self.folder / STATE, *self.folder.glob("generator_best*.keras")]:
            path.unlink(missing_ok=True)


def local_values(variables: list) -> list[np.ndarray]:
    """The variables' values, read without communication: a loss tracker's total summed
    over this process's replicas, as a read under one process's strategy gives; under
    multi_worker this worker's share (a global read needs every worker to join, and only
    the chief checkpoints)."""
    return [_local_value(variable) for variable in variables]


def assign_locally(variables: list, values: list) -> None:
    """Set the variables without communication, the counterpart of ``local_values``: a loss
    tracker's total is spread evenly over the replicas (its global read sums them back)."""
    for variable, value in zip(variables, values):
        if _synced_on_read(variable):
            # Keras' assign reads the value back, which for such a variable is a global read.
            variable.value.assign(tf.cast(value, variable.dtype), read_value=False)
        else:
            variable.assign(value)


def _synced_on_read(variable: keras.Variable) -> bool:
    return variable.synchronization == "on_read" and isinstance(variable.value, tf.distribute.DistributedValues)


def _local_value(variable: keras.Variable) -> np.ndarray:
    if not _synced_on_read(variable):
        return variable.numpy()
    value = variable.value
    copies = [copy.numpy() for copy in value.distribute_strategy.experimental_local_results(value)]
    return np.sum(copies, axis=0, dtype=copies[0].dtype) if variable.aggregation == "sum" else copies[0]
