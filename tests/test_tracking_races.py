"""Creating MLflow's store and rows: a new project's store is a copy of an empty one made
once; parallel jobs (sweeps, DVC queue workers) that create the same MLflow row at once: the
loser of the race uses the winner's row instead of failing its run."""

import logging
import sqlite3
from contextlib import closing

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.store.db.utils import _get_latest_schema_revision

from dcgan import tracking
from dcgan.files import CACHE_ENV


def test_a_new_store_is_a_copy_of_the_cached_empty_one_with_its_own_default_experiment(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    for project in ("first", "second", "third"):
        (tmp_path / project).mkdir()
    monkeypatch.chdir(tmp_path / "first")
    tracking.check_store(f"sqlite:///{tmp_path / 'first/mlflow.db'}")
    [template] = (tmp_path / "cache").glob("mlflow-*-empty.db")
    with closing(sqlite3.connect(template)) as db, db:
        assert db.execute("SELECT COUNT(*) FROM experiments").fetchone() == (0,)
        db.execute("PRAGMA user_version = 7")  # a mark that only a copy of this file carries

    monkeypatch.chdir(tmp_path / "second")
    with caplog.at_level(logging.WARNING, logger="dcgan.tracking"):
        tracking.check_store(f"sqlite:///{tmp_path / 'second/mlflow.db'}")
    assert not caplog.records  # not taken for a project moved from elsewhere
    with closing(sqlite3.connect(tmp_path / "second/mlflow.db")) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (7,)
        assert db.execute("SELECT version_num FROM alembic_version").fetchone() == (_get_latest_schema_revision(),)
    [default] = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'second/mlflow.db'}").search_experiments()
    assert (default.experiment_id, default.name) == ("0", "Default")
    assert default.artifact_location == str(tmp_path / "second/mlruns/0")

    template.write_bytes(b"damaged by hand")  # made again, not copied
    monkeypatch.chdir(tmp_path / "third")
    tracking.check_store(f"sqlite:///{tmp_path / 'third/mlflow.db'}")
    [default] = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'third/mlflow.db'}").search_experiments()
    assert default.artifact_location == str(tmp_path / "third/mlruns/0")
    with closing(sqlite3.connect(template)) as db:
        assert db.execute("SELECT COUNT(*) FROM experiments").fetchone() == (0,)


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
