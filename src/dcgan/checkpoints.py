"""Per-round training checkpoints that a rerun resumes from (``dcgan.resume`` decides whether).

A checkpoint is ``ckpt-<step>.npz``: every variable of the model, both optimizers and the
loss trackers (RNG states included, so a resumed run continues exactly) and the run's
state as of that step. ``state.json`` points at the latest complete one and carries the
run's identity, MLflow run id, history and best round; ``generator_best.keras`` is the
generator of that best round. Together they are everything a finished run needs to
rebuild its outputs, which DVC deletes before it reruns the stage.

Each file is written to a temp file and renamed into place, the pointer last, so a crash
at any moment leaves the previous checkpoint intact and in use; a checkpoint damaged on
disk afterwards is skipped for the older one that is kept.
"""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from dcgan.errors import UserError
from dcgan.files import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

STATE = "state.json"
BEST_GENERATOR = "generator_best.keras"
START_OVER = "rerun with train.resume=never to start over"


@dataclass
class RunState:
    """What ``state.json`` records about the run a checkpoint belongs to."""

    identity: dict  # the run-defining settings (config.run_identity) plus the data digest
    rounds: int = 0  # rounds (Keras epochs) completed
    step: int = 0  # optimizer steps completed; past the last round's end after a stop signal
    checkpoint: Optional[str] = None  # file name of the latest complete checkpoint
    mlflow_run_id: Optional[str] = None
    history: list[dict] = field(default_factory=list)  # one row of metrics per completed round
    best: Optional[dict] = None  # {"epoch", "fid"} of the round with the lowest in-training FID
    scoring: Optional[dict] = None  # the metrics.* settings the in-training scores were computed with

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"


def _state_from(text: str, source: Path) -> RunState:
    try:
        fields = json.loads(text)
        fields.setdefault("rounds", fields.pop("epoch", 0))  # its name before 2026-12
        return RunState(**fields)
    except (json.JSONDecodeError, TypeError) as exc:
        raise UserError(f"{source}: unreadable checkpoint state ({str(exc)[:120]}); {START_OVER}") from None


class CheckpointDir:
    def __init__(self, folder: Path, keep: int):
        self.folder = folder
        self.keep = keep

    @property
    def best_generator(self) -> Path:
        return self.folder / BEST_GENERATOR

    def load_state(self) -> Optional[RunState]:
        path = self.folder / STATE
        return _state_from(path.read_text(), path) if path.is_file() else None

    def save_state(self, state: RunState) -> None:
        atomic_write_text(self.folder / STATE, state.to_json())

    def save(self, variables: list, state: RunState) -> None:
        name = f"ckpt-{state.step:09d}.npz"
        state.checkpoint = name
        arrays = {f"v{i:04d}": np.asarray(v.numpy()) for i, v in enumerate(variables)}
        arrays["state"] = np.array(state.to_json())
        atomic_write(self.folder / name, lambda handle: np.savez(handle, **arrays))
        self.save_state(state)
        for old in sorted(self.folder.glob("ckpt-*.npz"))[: -self.keep]:
            old.unlink()

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
                variable.assign(array)
            return state
        raise UserError(f"{damage} and no older intact checkpoint is kept; {START_OVER}")

    def clear(self) -> None:
        for path in [*self.folder.glob("ckpt-*.npz"), self.folder / STATE, self.best_generator]:
            path.unlink(missing_ok=True)
