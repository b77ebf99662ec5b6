"""Reruns on whatever state a folder is in, with real processes: complete outputs from the
persisted state alone, one training per folder, and one-line errors for damaged state."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    REPO,
    TINY,
    TRAIN_OUTPUTS,
    Training,
    as_project,
    last_line_error,
    mlflow_client,
    run_stage,
    training_run_id,
)

pytestmark = pytest.mark.slow

# The outputs a rerun rebuilds from the checkpoint folder alone.
REBUILT = [path for path in TRAIN_OUTPUTS if not path.startswith("reports/samples")]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A folder holding a finished 2-epoch tiny run (2 checkpoints kept)."""
    workdir = tmp_path_factory.mktemp("finished")
    run_stage("train", *TINY, "train.epochs=2", cwd=workdir)
    return workdir


@pytest.fixture
def workdir(finished, tmp_path) -> Path:
    """A private copy of the finished run's folder."""
    copy = tmp_path / "run"
    shutil.copytree(finished, copy, ignore=shutil.ignore_patterns("stdout-*"))
    return copy


def _history_epochs(workdir: Path) -> list[str]:
    return [line.split(",")[0] for line in (workdir / "reports/train_history.csv").read_text().splitlines()[1:]]


def test_rerun_of_a_finished_run_rebuilds_every_output(workdir):
    run_id = json.loads((workdir / "models/run.json").read_text())["mlflow_run_id"]
    best_before = (workdir / "models/generator_best.keras").read_bytes()
    for path in REBUILT:
        (workdir / path).unlink()
    # metrics.* changed: the run is not retrained, its best and final scores are recomputed.
    result = run_stage("train", *TINY, "train.epochs=2", "metrics.train_samples=150", cwd=workdir)
    assert "resuming from" in result.stdout and "Epoch " not in result.stdout
    assert "metrics settings changed since the checkpoint (metrics.train_samples): rescoring" in result.stdout
    assert all((workdir / path).is_file() for path in TRAIN_OUTPUTS)
    assert _history_epochs(workdir) == ["1", "2"]
    state = json.loads((workdir / "models/checkpoints/state.json").read_text())
    final = json.loads((workdir / "reports/train_metrics.json").read_text())
    assert final["best_fid"] == state["best"]["fid"] and final["epoch"] == 2
    assert state["scoring"]["metrics.train_samples"] == 150
    if state["best"]["epoch"] == 1:  # the best epoch's generator comes from the checkpoint folder, unchanged
        assert (workdir / "models/generator_best.keras").read_bytes() == best_before
    assert json.loads((workdir / "models/run.json").read_text())["mlflow_run_id"] == run_id
    assert mlflow_client(workdir).get_run(run_id).info.status == "FINISHED"


def test_lowering_the_length_of_a_finished_run_is_refused_and_bad_state_is_one_line(workdir):
    error = last_line_error(run_stage("train", *TINY, cwd=workdir, check=False))
    assert error == (
        "error: models/checkpoints: holds a run trained for 16 steps (2 epochs), more than the 8 asked for "
        "(train.epochs / train.iterations); ask for at least 16 steps to keep it, or rerun with train.resume=never "
        "to start over (discarding it)"
    )
    assert json.loads((workdir / "models/checkpoints/state.json").read_text())["epochs"] == 2

    (workdir / "models/checkpoints/state.json").write_text("{not json")
    error = last_line_error(run_stage("train", *TINY, cwd=workdir, check=False))
    assert error.startswith("error: models/checkpoints/state.json: unreadable checkpoint state (")
    assert error.endswith("); rerun with train.resume=never to start over")
    run_stage("train", *TINY, "train.resume=never", cwd=workdir)
    assert _history_epochs(workdir) == ["1"]


def test_one_training_per_folder_and_a_killed_run_is_marked_killed(tmp_path):
    first = Training(tmp_path, *TINY, "train.epochs=100")
    first.wait_until(lambda: training_run_id(tmp_path) is not None)
    for stage in ("train", "evaluate"):
        started = time.monotonic()
        error = last_line_error(run_stage(stage, *TINY, cwd=tmp_path, check=False))
        assert error.startswith(f"error: models: in use by another process (pid {first.process.pid}: ")
        assert error.endswith("src/train.py debug=tiny train.epochs=100); wait for it to finish or stop it")
        assert time.monotonic() - started < 30  # at once: no data or model work
    # Re-preparing the data the training reads is refused too.
    error = last_line_error(run_stage("prepare", *TINY, cwd=tmp_path, check=False))
    assert error.startswith(f"error: data/prepared/mnist: in use by another process (pid {first.process.pid}: ")
    killed_run = training_run_id(tmp_path)

    # kill -9 leaves no stuck lock; the next run, with other settings, starts over and ends the dead run.
    assert first.stop(signal.SIGKILL, 0.0) == -signal.SIGKILL
    assert mlflow_client(tmp_path).get_run(killed_run).info.status == "RUNNING"
    run_stage("train", *TINY, "train.seed=5", cwd=tmp_path)
    client = mlflow_client(tmp_path)
    assert client.get_run(killed_run).info.status == "KILLED"
    new_run = json.loads((tmp_path / "models/run.json").read_text())["mlflow_run_id"]
    assert new_run != killed_run and client.get_run(new_run).info.status == "FINISHED"


def test_a_moved_or_copied_project_keeps_its_artifacts_inside_it(finished, workdir, tmp_path):
    """``workdir`` is a copy of ``finished``, whose store records artifact locations in ``finished``."""
    moved = tmp_path / "moved"
    workdir.rename(moved)
    # Its own process, as a user's, and nothing else writes into `finished` (asserted below).
    result = run_stage("train", *TINY, "train.epochs=3", cwd=moved, own_process=True)
    # A quiet console: none of TensorFlow's harmless C++ lines, no library warning, no ANSI codes.
    assert "E0000" not in result.stderr and "Warning" not in result.stderr, result.stderr[-3000:]
    assert "\x1b[" not in result.stdout and "Epoch 3/3" in result.stdout
    assert (
        f"artifact locations under {(finished / 'mlartifacts').as_uri()} "
        f"now point to {(moved / 'mlartifacts').as_uri()}" in result.stdout
    )
    run = mlflow_client(moved).get_run(json.loads((moved / "models/run.json").read_text())["mlflow_run_id"])
    assert run.info.artifact_uri.startswith((moved / "mlartifacts").as_uri())
    assert Path(run.info.artifact_uri.removeprefix("file://"), "samples", "epoch_0003.png").is_file()
    assert not list(finished.rglob("epoch_0003.png")) and not workdir.exists()  # nothing written to the old places


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_damaged_checkpoint_falls_back_to_the_older_one(workdir):
    checkpoints = workdir / "models/checkpoints"
    _truncate(checkpoints / "ckpt-000000016.npz")
    result = run_stage("train", *TINY, "train.epochs=3", cwd=workdir)
    assert "ckpt-000000016.npz: unreadable checkpoint (BadZipFile" in result.stderr + result.stdout
    assert "resuming from the older intact checkpoint" in result.stderr + result.stdout
    assert _history_epochs(workdir) == ["1", "2", "3"]
    assert sorted(p.name for p in checkpoints.glob("ckpt-*")) == ["ckpt-000000016.npz", "ckpt-000000024.npz"]
    run_id = json.loads((workdir / "models/run.json").read_text())["mlflow_run_id"]
    assert [m.step for m in mlflow_client(workdir).get_metric_history(run_id, "d_loss")] == [
        1,
        2,
        3,
    ]  # epoch 2, redone, once

    for checkpoint in checkpoints.glob("ckpt-*"):
        _truncate(checkpoint)
    error = last_line_error(run_stage("train", *TINY, "train.epochs=4", cwd=workdir, check=False))
    assert error.startswith("error: models/checkpoints/ckpt-000000024.npz: unreadable checkpoint (BadZipFile")
    assert error.endswith("and no older intact checkpoint is kept; rerun with train.resume=never to start over")
    run_stage("train", *TINY, "train.resume=never", cwd=workdir)
    assert _history_epochs(workdir) == ["1"]


def test_damaged_prepared_data_is_caught_before_any_work(workdir):
    run_id = json.loads((workdir / "models/run.json").read_text())["mlflow_run_id"]
    prepared = workdir / "data/prepared/mnist"
    shard = prepared / "train-00001-of-00002.tfrecord"
    original = shard.read_bytes()
    _truncate(shard, 0.9)
    for stage in ("train", "evaluate"):
        error = last_line_error(run_stage(stage, *TINY, "train.epochs=3", cwd=workdir, check=False))
        assert error == (
            f"error: data/prepared/mnist/{shard.name}: shard does not match the SHA-256 in manifest.json "
            "(truncated or changed); "
            "rerun prepare (dvc repro prepare, or python src/prepare.py)"
        )
    assert mlflow_client(workdir).get_run(run_id).info.status == "FINISHED"  # not flipped to FAILED
    assert json.loads((workdir / "models/checkpoints/state.json").read_text())["epochs"] == 2

    shard.write_bytes(original)
    manifest_path = prepared / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["image_shape"] = [32, 32, 1]  # hand-edited, still valid JSON
    manifest_path.write_text(json.dumps(manifest))
    error = last_line_error(run_stage("train", *TINY, "train.epochs=3", cwd=workdir, check=False))
    assert error == (
        "error: data/prepared/mnist/manifest.json: image_shape [32, 32, 1] (1024 bytes) does not match the 784-byte "
        "images in train-00000-of-00002.tfrecord; rerun prepare (dvc repro prepare, or python src/prepare.py)"
    )
    assert (workdir / "models/classifier/mnist/classifier.keras").is_file()  # nothing deleted


def test_damaged_train_outputs_given_to_evaluate(workdir):
    generator = workdir / "models/generator.keras"
    _truncate(generator)
    error = last_line_error(run_stage("evaluate", *TINY, cwd=workdir, check=False))
    assert error == (
        "error: models/generator.keras: not a readable Keras model (truncated or damaged: not a complete .keras "
        "archive); rerun the train stage (dvc repro -f train)"
    )

    (workdir / "models/run.json").write_text("{garbage")
    error = last_line_error(run_stage("evaluate", *TINY, cwd=workdir, check=False))
    assert (
        error == "error: models/run.json: not the train stage's run record (no mlflow_run_id); rerun the train stage "
        "(dvc repro -f train)"
    )


def test_a_store_that_is_not_a_database_fails_before_any_work(tmp_path):
    (tmp_path / "mlflow.db").write_text("not a database\n" * 100)
    error = last_line_error(run_stage("train", *TINY, cwd=tmp_path, check=False))
    assert error == (
        f"error: {tmp_path}/mlflow.db: cannot use the MLflow SQLite store (file is not a database); "
        f"move it aside (mv {tmp_path}/mlflow.db {tmp_path}/mlflow.db.damaged) to start a new one (checkpoints "
        "resume into a new run), "
        "or set tracking.uri"
    )
    assert not (tmp_path / "data").exists()


def test_a_damaged_store_names_itself_and_moving_it_aside_recovers(workdir):
    store = workdir / "mlflow.db"
    with open(store, "r+b") as handle:  # a damaged page in a real store
        handle.seek(20_000)
        handle.write(b"\xab" * 2_000)
    error = last_line_error(run_stage("train", *TINY, "train.epochs=3", cwd=workdir, check=False))
    assert error == (
        f"error: {store}: cannot use the MLflow SQLite store (database disk image is malformed); "
        f"move it aside (mv {store} {store}.damaged) to start a new one (checkpoints resume into a new run), or "
        "set tracking.uri"
    )
    assert json.loads((workdir / "models/checkpoints/state.json").read_text())["epochs"] == 2
    store.rename(store.with_suffix(".db.damaged"))
    result = run_stage("train", *TINY, "train.epochs=3", cwd=workdir)
    assert "continuing in a new run" in result.stdout + result.stderr and _history_epochs(workdir) == ["1", "2", "3"]


def test_config_mistakes_are_one_line_without_start_up_noise(tmp_path):
    result = run_stage("train", *TINY, "train.seed=4294967296", cwd=tmp_path, check=False, own_process=True)
    assert result.stderr == "error: config key train.seed: must be in 0..4294967295 (2**32 - 1), got 4294967296\n"

    (tmp_path / "params.yaml").write_text("data:\n  name: mnist\n  limit: [1, 2\ntrain:\n  epochs: 1\n")
    result = run_stage("train", "--config-dir=.", "--config-name=params", cwd=tmp_path, check=False, own_process=True)
    assert result.returncode == 1
    assert (
        result.stderr
        == f"error: {tmp_path}/params.yaml: line 4, column 6: not valid YAML (expected ',' or ']', but got ':')\n"
    )


def test_ctrl_c_while_the_classifier_trains(tmp_path):
    run_stage("prepare", *TINY, cwd=tmp_path)
    run = Training(tmp_path, *TINY, "metrics.classifier.epochs=200")
    run.wait_until(lambda: "training the domain classifier" in run.stdout.read_text())
    assert run.stop(signal.SIGINT, 2.0) == 130, run.stderr[-3000:]
    assert (
        run.stderr.strip()
        == "interrupted: SIGINT received: stopped while training the domain classifier (models/classifier/mnist "
        "is not kept); rerun the same command"
    )
    assert not (
        tmp_path / "models/classifier/mnist/classifier.json"
    ).exists()  # no half-trained classifier passes for done


def test_read_only_checkpoints_fail_up_front_and_keep_the_best_generator(workdir, mount_tmpfs):
    best = (workdir / "models/generator_best.keras").read_bytes()
    checkpoints = workdir / "models/checkpoints"
    shutil.rmtree(checkpoints)
    mount_tmpfs(checkpoints, "ro,size=1m")
    result = run_stage("train", *TINY, "train.epochs=2", "train.seed=3", cwd=workdir, check=False)
    assert last_line_error(result) == "error: models/checkpoints: output folder is not writable (Read-only file system)"
    assert "Epoch " not in result.stdout
    assert (workdir / "models/generator_best.keras").read_bytes() == best


def test_a_prepare_killed_mid_way_leaves_nothing_behind_after_a_rerun(tmp_path):
    prepared = tmp_path / "data/prepared"
    process = subprocess.Popen(
        [sys.executable, str(REPO / "src/prepare.py")],
        cwd=as_project(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not list(prepared.glob(".mnist.tmp-*/train-*")) and time.monotonic() < deadline:
        assert process.poll() is None
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert list(prepared.glob(".mnist.tmp-*"))
    run_stage("prepare", *TINY, cwd=tmp_path)
    assert sorted(p.name for p in prepared.iterdir()) == ["mnist"]
