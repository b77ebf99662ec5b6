"""``train.strategy=multi_worker``: worker processes on 127.0.0.1 (TF_CONFIG, a one-machine
SLURM cluster, Ray), CPU, the tiny profile; the one-process comparison is the mirrored strategy
on two logical CPUs."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import (
    REPO,
    TINY,
    Training,
    free_port,
    last_line_error,
    mlflow_client,
    run_stage,
    subprocess_env,
)
from sweeps import ray_to_itself

# fp32 and one op thread per replica: the comparison with the one-process run is then one of
# the all-reduce's summation order alone (with 2 threads, oneDNN's own sums differ too).
TINY_RUN = [*TINY, "data.limit=256", "metrics.every=0", "train.precision=fp32"]
ARGS = [*TINY_RUN, "train.threads=1"]
MULTI = [*ARGS, "train.strategy=multi_worker"]
# Measured: the generators of both runs differ by at most 2.4e-7, against weights of up to 1.0.
WEIGHT_TOLERANCE = 1e-5


def tf_config(ports: list[int], index: int) -> str:
    return json.dumps(
        {"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]}, "task": {"type": "worker", "index": index}}
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A project with the tiny data prepared in two shards, one per worker."""
    folder = tmp_path_factory.mktemp("prepared")
    run_stage("prepare", *TINY_RUN, cwd=folder)
    return folder


def copy_of(prepared: Path, target: Path) -> Path:
    shutil.copytree(prepared, target)
    return target


def start_workers(folders: list[Path], *overrides: str) -> list[Training]:
    """One worker per folder (the chief in the first), all of one training."""
    ports = [free_port() for _ in folders]
    return [
        Training(folder, *MULTI, *overrides, env={"TF_CONFIG": tf_config(ports, index)})
        for index, folder in enumerate(folders)
    ]


def finish(workers: list[Training], timeout: float = 300) -> None:
    for worker in workers:
        assert worker.process.wait(timeout=timeout) == 0, worker.stderr[-3000:]


def launch(command: list[str], project: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """A launcher's command (Ray's, SLURM's) run in ``project`` to its successful end."""
    result = subprocess.run(
        command, cwd=project, env={**subprocess_env(), **(env or {})}, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def assert_one_run_of_two_workers(project: Path) -> None:
    """The project's one MLflow run, finished and tagged with two workers; its metrics at epoch 2."""
    client = mlflow_client(project)
    runs = client.search_runs([client.get_experiment_by_name("dcgan-tiny").experiment_id])
    assert [(run.info.status, run.data.tags["train.workers"]) for run in runs] == [("FINISHED", "2")]
    assert json.loads((project / "reports/train_metrics.json").read_text())["epoch"] == 2


def files_of(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` (the tests' own logs aside) with its size and mtime."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in folder.rglob("*")
        if path.is_file() and not path.name.startswith("stdout-")
    }


def generator_weights(project: Path) -> list[np.ndarray]:
    return keras.saving.load_model(project / "models/generator.keras", compile=False).get_weights()


@pytest.mark.slow
def test_two_workers_train_one_run_the_chief_writes_and_the_weights_match_one_process(prepared, tmp_path):
    chief, worker = copy_of(prepared, tmp_path / "chief"), copy_of(prepared, tmp_path / "worker")
    worker_files = files_of(worker)
    finish(start_workers([chief, worker], "train.epochs=2"))

    assert_one_run_of_two_workers(chief)
    for output in ("models/generator.keras", "models/checkpoints/state.json"):
        assert (chief / output).is_file()
    # The other worker read its shard and wrote nothing: no outputs, MLflow store or Hydra record.
    assert files_of(worker) == worker_files

    one_process = copy_of(prepared, tmp_path / "mirrored")
    run_stage(
        "train", *ARGS, "train.epochs=2", "train.strategy=mirrored", "train.cpu_devices=2", own_process=True,
        cwd=one_process,
    )  # fmt: skip
    differences = [np.abs(a - b).max() for a, b in zip(generator_weights(chief), generator_weights(one_process))]
    assert max(differences) < WEIGHT_TOLERANCE


@pytest.mark.slow
def test_a_killed_worker_stops_the_chief_and_a_rerun_resumes_from_its_checkpoint(prepared, tmp_path):
    chief, worker = copy_of(prepared, tmp_path / "chief"), copy_of(prepared, tmp_path / "worker")
    state = chief / "models/checkpoints/state.json"
    workers = start_workers([chief, worker], "train.epochs=3")
    workers[0].wait_until(lambda: state.is_file() and json.loads(state.read_text())["epochs"] >= 1)
    workers[1].process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    assert workers[0].process.wait(timeout=120) == 1
    assert time.monotonic() - killed_at < 60  # the coordination service's heartbeat: 10 s
    error = workers[0].stderr.strip().splitlines()[-1]
    assert error.startswith("error: worker 0 lost the connection to the others (127.0.0.1:"), error
    kept = json.loads(state.read_text())["epochs"]

    rerun = start_workers([chief, worker], "train.epochs=3")
    finish(rerun)
    assert f"after epoch {kept} (step {kept * 4})" in rerun[0].stdout.read_text()  # resumed, not started over
    history = (chief / "reports/train_history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == [str(epoch) for epoch in range(1, 4)]


@pytest.mark.slow
def test_a_worker_nobody_answers_fails_in_bounded_time_naming_the_addresses(prepared, tmp_path):
    missing = free_port()
    config = json.dumps(
        {
            "cluster": {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{missing}"]},
            "task": {"type": "worker", "index": 0},
        }
    )
    started = time.monotonic()
    alone = Training(prepared, *MULTI, "train.cluster_timeout=3", env={"TF_CONFIG": config})
    assert alone.process.wait(timeout=120) == 1
    assert time.monotonic() - started < 60
    assert (
        f"heard nothing from 127.0.0.1:{missing} within 3 s (config key train.cluster_timeout)"
        in (alone.stderr.strip().splitlines()[-1])
    )


@pytest.mark.parametrize(
    ("tf_config_value", "expected"),
    [
        (None, "multi_worker needs its cluster in TF_CONFIG or a SLURM job step of several tasks"),
        ("{not json", "TF_CONFIG: not a cluster and task (JSONDecodeError"),
        (tf_config([1, 2], 2), "TF_CONFIG: task worker 2 is not in the cluster"),
        (tf_config([1, 2, 3], 0), "2 training shards cannot be split between 3 replicas"),
    ],
)
def test_a_cluster_that_cannot_work_fails_before_connecting(prepared, monkeypatch, tf_config_value, expected):
    for variable in ("TF_CONFIG", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(variable, raising=False)
    if tf_config_value is not None:
        monkeypatch.setenv("TF_CONFIG", tf_config_value)
    result = run_stage("train", *TINY_RUN, "train.strategy=multi_worker", cwd=prepared, check=False)
    assert result.returncode == 1
    assert expected in last_line_error(result)


@pytest.mark.slow
def test_a_training_on_a_ray_cluster_of_two_workers(prepared, tmp_path):
    """Ray Train places the workers on a Ray started on this machine and sets their TF_CONFIG."""
    project = copy_of(prepared, tmp_path / "project")
    with ray_to_itself():  # not while another test's loopback cluster runs: its `ray stop` would end this Ray
        launch(
            [sys.executable, str(REPO / "src/train_on_ray.py"), "--workers", "2", *TINY_RUN, "train.epochs=2"], project
        )
    assert_one_run_of_two_workers(project)


@pytest.mark.slow
def test_a_slurm_job_step_of_two_tasks_trains_one_run_on_its_reserved_ports(prepared, slurm, tmp_path):
    """srun starts both workers in one project folder; their addresses come from SLURM."""
    project, (env, reserved) = copy_of(prepared, tmp_path / "project"), slurm
    records = set((project / "outputs").glob("*/*/.hydra"))
    result = launch(
        ["srun", "--ntasks=2", "--label", sys.executable, str(REPO / "src/train.py"), *MULTI, "train.epochs=2"]
        + ["train.cluster_timeout=60"],  # a failed start fails the test in a minute
        project,
        env,
    )
    assert_one_run_of_two_workers(project)
    assert len(set((project / "outputs").glob("*/*/.hydra")) - records) == 1  # the chief's run record alone
    # TensorFlow's own account of the cluster, from each task: addresses on the reserved ports.
    clusters = set(re.findall(r"cluster_spec = \{'worker': \[(.*?)\]", result.stdout))
    assert len(clusters) == 1, result.stdout[-3000:]
    ports = [int(port) for port in re.findall(r"'localhost:(\d+)'", clusters.pop())]
    assert len(ports) == 2 and all(port in reserved for port in ports), ports
