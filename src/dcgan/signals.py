"""Ctrl-C and SIGTERM as requests to stop at the next safe point.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be, and Keras
swallows it there now and then (bare ``except:`` clauses while it builds layers and
metrics): the run would go on as if nothing had been asked. So the long stages record the
signal instead and stop where stopping leaves only complete outputs behind.
"""

from __future__ import annotations

import signal

import keras

from dcgan.errors import Interrupted


class StopSignals:
    """While active, SIGINT/SIGTERM only record a request to stop, which the code inside
    honours at its next check (``check``, ``StopAtSignal``, ``Checkpointer``); a second
    signal stops at once. Nested uses share the outermost one's record."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self._depth = 0

    def __enter__(self) -> "StopSignals":
        if self._depth == 0:
            self.received = None
            self.previous = {signum: signal.signal(signum, self._request) for signum in self.SIGNALS}
        self._depth += 1
        return self

    def __exit__(self, *exc_info) -> None:
        self._depth -= 1
        if self._depth == 0:
            for signum, handler in self.previous.items():
                signal.signal(signum, handler)

    def _request(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def check(self, consequence: str) -> None:
        """Raise ``Interrupted`` (exit 128 + signal) if a stop was asked for."""
        if self.received is not None:
            raise Interrupted(self.received, f"{signal.Signals(self.received).name} received: {consequence}")


stop_signals = StopSignals()  # one per process: signal handlers are process-wide


class StopAtSignal(keras.callbacks.Callback):
    """Ends a plain ``fit`` (or ``evaluate``) after the batch during which a stop was asked for."""

    def __init__(self, stop: StopSignals, consequence: str):
        super().__init__()
        self.stop = stop
        self.consequence = consequence

    def on_train_batch_end(self, batch, logs=None):
        self.stop.check(self.consequence)

    on_test_batch_end = on_train_batch_end
