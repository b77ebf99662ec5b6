"""Stop signals are recorded and honoured at the next check, never lost inside Keras."""

from __future__ import annotations

import os
import signal

import keras
import numpy as np
import pytest

from dcgan.errors import Interrupted
from dcgan.signals import StopAtSignal, stop_signals


def test_a_signal_is_kept_for_the_next_check_and_a_second_one_stops_at_once():
    before = signal.getsignal(signal.SIGINT)
    with stop_signals as stop:
        with stop_signals:  # nested uses share one record
            os.kill(os.getpid(), signal.SIGTERM)
            keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])  # goes on, whatever Keras catches
        assert stop.received == signal.SIGTERM
        with pytest.raises(Interrupted, match="^SIGTERM received: stopped here$") as raised:
            stop.check("stopped here")
        assert raised.value.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
    with stop_signals as stop:  # a new use starts without the old request
        stop.check("not raised")


def test_a_fit_ends_after_the_batch_the_signal_came_in():
    class SignalAtBatch(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 2:
                os.kill(os.getpid(), signal.SIGINT)

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    finished = []
    ends = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: finished.append(batch))
    with stop_signals as stop, pytest.raises(Interrupted, match="^SIGINT received: classifier not kept$"):
        model.fit(
            np.zeros((64, 4)),
            np.zeros(64),
            batch_size=8,
            epochs=3,
            verbose=0,
            callbacks=[SignalAtBatch(), ends, StopAtSignal(stop, "classifier not kept")],
        )
    assert finished == [0, 1, 2]
