"""Parallel jobs (sweeps, DVC queue workers) that create the same MLflow row at once: the
loser of the race uses the winner's row instead of failing its run."""

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from dcgan import tracking


def test_a_lost_creation_race_is_retried_once_and_other_errors_are_not(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    winner = tracking.experiment_id("shared")  # the other job got there first
    calls = []

    def create_or_look_up() -> str:  # what MLflow does when the lookup ran before the winner's insert
        calls.append(len(calls))
        return (
            mlflow.create_experiment("shared")
            if len(calls) == 1
            else mlflow.get_experiment_by_name("shared").experiment_id
        )

    assert tracking.once_more_if_raced(create_or_look_up) == winner and calls == [0, 1]

    calls.clear()
    with pytest.raises(MlflowException):
        tracking.once_more_if_raced(lambda: calls.append(1) or mlflow.MlflowClient().get_run("0" * 32))
    assert calls == [1]
