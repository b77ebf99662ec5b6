"""Exceptions the CLI reports as one line instead of a traceback."""


class UserError(Exception):
    """A problem the user can fix (bad data, config or environment): one line, exit 1."""


class TrainingDiverged(UserError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


class Interrupted(Exception):
    """SIGINT/SIGTERM stopped training after a step and a checkpoint: exit 128 + signal."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
