"""The team's tracking server (`src/tracking_server.py`, dcgan.tracking_server): real PostgreSQL and `mlflow
server` processes on 127.0.0.1, written to by sweeps, a DVC queue and a training that
outlives a server restart; a wrong password or a database that is down is one line."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest
from conftest import (
    REPO,
    TINY,
    Training,
    dvc_project,
    free_port,
    last_line_error,
    needs_package,
    run_dvc_queue,
    run_stage,
    sh,
    sweep_runs,
    training_run_id,
    venv_env,
)
from mlflow import MlflowClient

from dcgan import tracking_server

pytestmark = pytest.mark.slow


class TeamServer:
    def __init__(self, folder: Path):
        self.folder = folder
        self.port, self.db_port = free_port(), free_port()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, action: str) -> subprocess.CompletedProcess:
        """``python src/tracking_server.py <action>`` as a user runs it."""
        return subprocess.run(
            [
                sys.executable,
                str(REPO / "src/tracking_server.py"),
                action,
                "--folder",
                str(self.folder),
                "--port",
                str(self.port),
                "--db-port",
                str(self.db_port),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )

    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)


@pytest.fixture(scope="module")
def team_server():
    needs_package(
        "postgresql",
        bool(glob.glob("/usr/lib/postgresql/*/bin/initdb") or shutil.which("initdb")),
        "the team server's database",
    )
    # PostgreSQL runs as its own account when the tests run as root: the folder must be reachable.
    parent = Path(tempfile.mkdtemp(prefix="dcgan-team-"))
    parent.chmod(0o755)
    team = TeamServer(parent / ".mlflow-server")
    started = team.command("start")
    assert started.returncode == 0, started.stderr[-3000:]
    assert f"export MLFLOW_TRACKING_URI={team.uri}" in started.stdout
    yield team
    tracking_server.stop(team.folder)
    shutil.rmtree(parent, ignore_errors=True)


def test_the_server_keeps_its_runs_across_a_restart_and_its_secrets_to_itself(team_server):
    folder = tracking_server.ServerFolder(team_server.folder)
    assert oct(folder.password_file.stat().st_mode & 0o777) == "0o600"
    password = folder.password()
    with psycopg.connect(
        host="127.0.0.1", port=team_server.db_port, user="mlflow", password=password, dbname="mlflow"
    ) as db:
        assert db.execute("SHOW listen_addresses").fetchone()[0] == "127.0.0.1"
        assert db.execute("SHOW unix_socket_directories").fetchone()[0] == ""
    pid = folder.state()["pid"]
    assert password not in Path(f"/proc/{pid}/cmdline").read_text()  # others on the machine can read command lines

    client = team_server.client()
    experiment = client.create_experiment("restart")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "loss", 0.5, step=1)
    client.log_text(run.info.run_id, "kept", "note.txt")
    stopped = team_server.command("stop")
    assert "MLflow server" in stopped.stdout and stopped.stdout.count(": stopped") == 2, stopped.stdout
    assert team_server.command("start").returncode == 0
    assert client.get_run(run.info.run_id).data.metrics == {"loss": 0.5}
    assert (
        client.download_artifacts(run.info.run_id, "note.txt", str(team_server.folder.parent))
        and (team_server.folder.parent / "note.txt").read_text() == "kept"
    )


def test_a_port_in_use_is_refused_before_anything_starts(team_server, tmp_path):
    second = TeamServer(tmp_path / ".mlflow-server")
    second.port = team_server.port  # the first server's
    result = second.command("start")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"error: 127.0.0.1:{team_server.port}: the port for the MLflow server is in use by another "
        "process; stop that process or choose another port (--port, or SERVER_PORT= for make server)"
    )
    assert not tracking_server.ServerFolder(second.folder).cluster.exists()  # no PostgreSQL left running or even made
    assert second.command("status").stdout.strip() == f"{second.folder}: no server was started here"

    second.port, second.db_port = free_port(), team_server.db_port  # the first server's PostgreSQL
    assert second.command("start").stderr.strip() == (
        f"error: 127.0.0.1:{team_server.db_port}: the port for PostgreSQL is in use by another process; stop "
        "that process or choose "
        "another port (--db-port, or DB_PORT= for make server)"
    )
    assert "running" in team_server.command("status").stdout  # the first server was not disturbed


def test_four_jobs_writing_at_once_lose_nothing(team_server, tmp_path):
    run_stage("prepare", *TINY, "data.limit=128", cwd=tmp_path)
    sweep = [
        *TINY,
        "data.limit=128",
        "train.epochs=3",
        "hydra/launcher=parallel",
        "hydra.launcher.n_jobs=4",
        "optimizer=adam,rmsprop",
        "train.seed=1,2",
        f"tracking.uri={team_server.uri}",
        "tracking.experiment=four-writers",
    ]
    run_stage("train", "-m", *sweep, cwd=tmp_path)
    client = team_server.client()
    parent, runs = sweep_runs(client, "four-writers")
    assert parent.info.status == "FINISHED" and len(runs) == 4
    for run in runs:
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "d_loss")] == [1, 2, 3]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "progress/fid")] == [1, 2, 3]
        samples = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
        assert samples == {f"samples/epoch_{n:04d}.png" for n in (1, 2, 3)}
    logged = client.search_logged_models([parent.info.experiment_id])
    assert sorted(model.source_run_id for model in logged) == sorted(run.info.run_id for run in runs)


def test_a_dvc_queue_runs_every_stage_against_the_server(team_server, tmp_path):
    """Two queued experiments (prepare, classifier, train, evaluate) run by two DVC workers,
    with MLFLOW_TRACKING_URI exported as docs/team.md says: training and evaluation land in
    one run each, artifacts in the server's folder, generators in its registry, which
    generate reads."""
    profile = [*TINY, "data.limit=256", "tracking.experiment=queued-team"]
    project = dvc_project(tmp_path / "project", profile)
    env = venv_env(MLFLOW_TRACKING_URI=team_server.uri)
    # `dvc exp run -S` composes params.yaml from conf/ and the -S overrides alone: all of them, each time.
    sh("dvc", "exp", "run", "--queue", *(f"-S{o}" for o in [*profile, "optimizer=adam,rmsprop"]), cwd=project, env=env)
    status = run_dvc_queue(project, env=env, server_log=team_server.folder / "mlflow.log")
    assert status.count("Success") == 2, status

    client = team_server.client()
    runs = client.search_runs([client.get_experiment_by_name("queued-team").experiment_id])
    assert sorted(run.data.params["optimizer.name"] for run in runs) == ["adam", "rmsprop"]
    for run in runs:
        assert run.info.status == "FINISHED" and run.info.run_name == run.data.tags["dvc_exp_name"]
        assert {"d_loss", "progress/fid", "final_fid", "eval_diversity_ratio"} <= set(run.data.metrics)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")
        stored = team_server.folder / "artifacts" / run.info.experiment_id / run.info.run_id / "artifacts"
        assert (stored / "evaluation" / "samples.png").is_file() and (stored / "samples" / "epoch_0001.png").is_file()
    versions = client.search_model_versions("name = 'dcgan-mnist'")
    assert sorted(version.run_id for version in versions) == sorted(run.info.run_id for run in runs)
    assert client.get_model_version_by_alias("dcgan-mnist", "champion").tags["fid"] == repr(
        min(float(version.tags["fid"]) for version in versions)
    )
    assert not (project / "mlflow.db").exists()  # nothing went to a local store
    # Anyone with the URI gets images from the team's champion.
    run_stage(
        "generate",
        *TINY,
        f"tracking.uri={team_server.uri}",
        "generate.model=models:/dcgan-mnist@champion",
        "generate.num_images=4",
        "generate.npy=true",
        f"generate.out_dir={tmp_path / 'champion'}",
        cwd=project,
    )
    assert np.load(tmp_path / "champion/images.npy").shape == (4, 28, 28, 1)


def test_a_server_restart_mid_training_loses_no_epoch(team_server, tmp_path):
    """The server (MLflow and PostgreSQL) stopped for 15 s during a training: MLflow's
    client retries ride it out, and every epoch's metrics and grid arrive. Without
    retries, the training stops with one line and its rerun resumes into the same run."""
    epochs = 6
    profile = [*TINY, "data.limit=128", f"train.epochs={epochs}"]  # 2 steps an epoch: the outage dominates
    client = team_server.client()

    def train_through_an_outage(workdir: Path, experiment: str, env: dict | None = None) -> Training:
        """Start a training, stop the server once its first epoch is logged, start it 15 s later."""
        training = Training(
            workdir,
            *profile,
            f"tracking.uri={team_server.uri}",
            f"tracking.experiment={experiment}",
            env=env,
        )
        training.wait_until(lambda: logged_epochs(experiment) >= 1, timeout=300)
        tracking_server.stop(team_server.folder)
        training.epochs_at_outage = training.epochs_started()
        time.sleep(15)
        training.alive_after_outage = training.process.poll() is None
        assert team_server.command("start").returncode == 0
        return training

    def logged_epochs(experiment: str) -> int:
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id]) if found else []
        return len(client.get_metric_history(runs[0].info.run_id, "d_loss")) if runs else 0

    def complete_run(experiment: str):
        runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
        assert len(runs) == 1
        run = runs[0]
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "d_loss")] == list(range(1, epochs + 1))
        assert len({a.path for a in client.list_artifacts(run.info.run_id, "samples")}) == epochs
        assert client.search_logged_models([run.info.experiment_id])
        return run

    (tmp_path / "retried").mkdir()
    training = train_through_an_outage(tmp_path / "retried", "outage")
    assert training.alive_after_outage and training.epochs_at_outage < epochs  # the outage fell inside the training
    assert training.process.wait(timeout=600) == 0, training.stderr[-3000:]
    complete_run("outage")

    (tmp_path / "stopped").mkdir()
    training = train_through_an_outage(
        tmp_path / "stopped", "outage-no-retries", env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    )
    assert training.process.wait(timeout=600) == 1
    error = training.stderr.strip().splitlines()[-1]
    assert (
        error.startswith(f"error: MLflow tracking store {team_server.uri} failed during the run (")
        and "Traceback" not in training.stderr
    )
    assert error.endswith("completed epochs are checkpointed: rerun the same command to resume into the same run")
    run_id = training_run_id(tmp_path / "stopped")
    run_stage(
        "train",
        *profile,
        f"tracking.uri={team_server.uri}",
        "tracking.experiment=outage-no-retries",
        cwd=tmp_path / "stopped",
    )
    assert complete_run("outage-no-retries").info.run_id == run_id


def test_a_wrong_password_or_a_database_that_is_down_is_one_line(team_server, tmp_path):
    folder = tracking_server.ServerFolder(team_server.folder)
    direct = f"postgresql://mlflow:wrong@127.0.0.1:{team_server.db_port}/mlflow"
    result = run_stage("train", *TINY, f"tracking.uri={direct}", cwd=tmp_path, check=False)
    assert last_line_error(result) == (
        f"error: MLflow tracking store postgresql://mlflow:***@127.0.0.1:{team_server.db_port}/mlflow: "
        f'connection failed: connection to server at "127.0.0.1", port {team_server.db_port} failed: '
        'FATAL:  password authentication failed for user "mlflow"'
    )
    assert "wrong" not in result.stderr
    assert not (tmp_path / "models").exists() and not (tmp_path / "data").exists()  # nothing started

    # The server's password file no longer matches the database's: `start` says so.
    password = folder.password()
    folder.password_file.write_text("not-the-password\n")
    try:
        started = team_server.command("start")
    finally:
        folder.password_file.write_text(password + "\n")
    assert started.returncode != 0 and "Traceback" not in started.stderr
    assert started.stderr.strip() == (
        f"error: PostgreSQL at 127.0.0.1:{team_server.db_port} (password from {folder.password_file}): "
        f'connection failed: connection to server at "127.0.0.1", port {team_server.db_port} failed: '
        'FATAL:  password authentication failed for user "mlflow"'
    )

    # PostgreSQL down behind a running MLflow server: the pre-flight check fails in seconds.
    subprocess.run(
        tracking_server._as_db_account(
            [tracking_server._postgres_bin("pg_ctl"), "stop", "-D", str(folder.cluster), "-m", "fast", "-w"]
        ),
        check=True,
    )
    try:
        began = time.monotonic()
        result = run_stage("train", *TINY, f"tracking.uri={team_server.uri}", cwd=tmp_path, check=False)
        assert time.monotonic() - began < 120
        error = last_line_error(result)
        assert error.startswith(f"error: MLflow tracking store {team_server.uri} is unreachable: ")
        assert "is its database up? see the server's log" in error
        assert not (tmp_path / "models").exists()
    finally:
        assert team_server.command("start").returncode == 0
    status = team_server.command("status").stdout
    assert status.count(": running") == 2, status
    assert json.loads(folder.state_file.read_text())["port"] == team_server.port
    assert os.stat(folder.cluster).st_mode & 0o077 == 0  # PostgreSQL insists its cluster is private
