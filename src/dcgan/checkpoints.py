"""Per-epoch training checkpoints that a rerun resumes from.

A checkpoint is ``ckpt-<step>.npz`` (every variable of the model, both optimizers and the
loss trackers, including RNG states, so a resumed run continues exactly) plus ``state.json``, the
pointer naming the latest complete checkpoint with the run's identity, MLflow run id and
history. Both are written to a temp file and renamed into place, the pointer last, so a
crash at any moment leaves the previous checkpoint intact and in use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from dcgan.errors import UserError
from dcgan.files import atomic_write, atomic_write_text

STATE = "state.json"


@dataclass
class RunState:
    """What ``state.json`` records about the run a checkpoint belongs to."""

    identity: dict  # the run-defining settings (config.run_identity) plus the data manifest hash
    epoch: int = 0  # rounds (Keras epochs) completed
    step: int = 0  # optimizer steps completed; past the last round's end after a stop signal
    checkpoint: Optional[str] = None  # file name of the latest complete checkpoint
    mlflow_run_id: Optional[str] = None
    history: list[dict] = field(default_factory=list)  # one row of metrics per completed epoch
    best: Optional[dict] = None  # {"epoch", "fid"} of the round with the lowest in-training FID


class CheckpointDir:
    def __init__(self, folder: Path, keep: int):
        self.folder = folder
        self.keep = keep

    def load_state(self) -> Optional[RunState]:
        path = self.folder / STATE
        if not path.is_file():
            return None
        try:
            return RunState(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as exc:
            raise UserError(f"{path}: unreadable checkpoint state ({exc}); delete {self.folder} to start over") from None

    def save(self, variables: list, state: RunState) -> None:
        name = f"ckpt-{state.step:09d}.npz"
        arrays = {f"v{i:04d}": np.asarray(v.numpy()) for i, v in enumerate(variables)}
        atomic_write(self.folder / name, lambda handle: np.savez(handle, **arrays))
        state.checkpoint = name
        atomic_write_text(self.folder / STATE, json.dumps(state.__dict__, indent=1, sort_keys=True) + "\n")
        for old in sorted(self.folder.glob("ckpt-*.npz"))[: -self.keep]:
            old.unlink()

    def restore(self, variables: list, state: RunState) -> None:
        path = self.folder / state.checkpoint
        try:
            with np.load(path) as stored:
                arrays = [stored[f"v{i:04d}"] for i in range(len(stored.files))]
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"{path}: unreadable checkpoint ({exc}); delete {self.folder} to start over") from None
        if len(arrays) != len(variables):
            raise UserError(f"{path}: holds {len(arrays)} variables, the model has {len(variables)}; delete {self.folder} to start over")
        for variable, array in zip(variables, arrays):
            if tuple(variable.shape) != array.shape:
                raise UserError(
                    f"{path}: variable {variable.path} has shape {array.shape} in the checkpoint "
                    f"but {tuple(variable.shape)} in the model; delete {self.folder} to start over"
                )
            variable.assign(array)

    def clear(self) -> None:
        for path in list(self.folder.glob("ckpt-*.npz")) + [self.folder / STATE]:
            path.unlink(missing_ok=True)
