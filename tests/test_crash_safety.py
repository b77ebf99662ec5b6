"""Crash-safe training with real processes: SIGKILL, SIGINT and SIGTERM at several points,
non-finite losses, changed data, and output folders that are read-only or full."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TINY, Training, last_line_error, mlflow_client, run_stage, subprocess_env, training_run_id

pytestmark = pytest.mark.slow

# 512 images at batch 16: 32 steps an epoch, 3 epochs (about 10 s each on one Zen 3 core).
LONGER = [*TINY, "train.batch_size=16", "train.epochs=3"]
STEPS_PER_EPOCH = 32


def _state(workdir: Path) -> dict | None:
    path = workdir / "models/checkpoints/state.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _final_weights(workdir: Path) -> dict[str, np.ndarray]:
    state = _state(workdir)
    with np.load(workdir / "models/checkpoints" / state["checkpoint"]) as stored:
        return {key: stored[key] for key in stored.files if key != "state"}  # the variables; the state has timings


def test_killed_and_interrupted_runs_resume_to_identical_weights(tmp_path):
    straight, chaos = tmp_path / "straight", tmp_path / "chaos"
    for workdir in (straight, chaos):
        workdir.mkdir()
        run_stage("prepare", *LONGER, cwd=workdir)
    run_stage("train", *LONGER, own_process=True, cwd=straight)

    # 1. SIGKILL in the first epoch, before any checkpoint exists.
    run = Training(chaos, *LONGER)
    run.wait_until(lambda: run.epochs_started() >= 1)
    assert run.stop(signal.SIGKILL, 2.0) == -signal.SIGKILL
    assert _state(chaos) is None or _state(chaos)["step"] < STEPS_PER_EPOCH

    # 2. SIGKILL mid-epoch 2, just after the checkpoint of epoch 1 was committed.
    run = Training(chaos, *LONGER)
    run.wait_until(lambda: (_state(chaos) or {}).get("step") == STEPS_PER_EPOCH)
    assert run.stop(signal.SIGKILL, 1.0) == -signal.SIGKILL

    # 3. SIGTERM mid-epoch: the step finishes, a checkpoint of it is written, the run is KILLED.
    run = Training(chaos, *LONGER)
    run.wait_until(lambda: run.epochs_started() >= 1)
    assert run.stop(signal.SIGTERM, 3.0) == 128 + signal.SIGTERM
    message = run.stderr.strip().splitlines()[-1]
    assert (
        message.startswith("interrupted: SIGTERM received: stopped after step ") and "rerun the same command" in message
    )
    stopped = _state(chaos)
    assert (
        STEPS_PER_EPOCH < stopped["step"] < 3 * STEPS_PER_EPOCH
    )  # usually mid-epoch; at an epoch's end it commits it first
    run_id = training_run_id(chaos)
    assert mlflow_client(chaos).get_run(run_id).info.status == "KILLED"

    # 4. SIGINT (Ctrl-C) in the epoch resumed from that mid-epoch checkpoint.
    run = Training(chaos, *LONGER)
    run.wait_until(lambda: run.epochs_started() >= 1)
    assert run.stop(signal.SIGINT, 2.0) == 128 + signal.SIGINT
    assert _state(chaos)["step"] > stopped["step"]

    # 5. Run to the end: the same weights, optimizer state and per-epoch losses as without interruptions.
    run_stage("train", *LONGER, own_process=True, cwd=chaos)
    expected, actual = _final_weights(straight), _final_weights(chaos)
    assert expected.keys() == actual.keys() and len(expected) > 40
    assert all(np.array_equal(expected[key], actual[key]) for key in expected)
    losses = ("d_loss", "g_loss", "d_real", "d_fake")
    assert [{k: row[k] for k in losses} for row in _state(chaos)["history"]] == [
        {k: row[k] for k in losses} for row in _state(straight)["history"]
    ]
    # One MLflow run throughout, finished, with one metric point per epoch.
    assert json.loads((chaos / "models/run.json").read_text())["mlflow_run_id"] == run_id
    client = mlflow_client(chaos)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "d_loss")] == [1, 2, 3]


@pytest.mark.parametrize(
    "huge, error, kept, grids",
    [
        # D's weights overflow in its first update: the next step's loss is NaN.
        (
            ["optimizer.discriminator.learning_rate=1e30"],
            "error: d_loss became nan at step 2; training stopped and the last good checkpoint "
            "models/checkpoints/ckpt-000000001.npz is kept",
            ["ckpt-000000001.npz", "generator_best-000000001.keras", "state.json"],
            ["epoch_0001.png"],
        ),
        # G's too: the step's losses, computed before its update, are finite, its samples are not.
        (
            ["optimizer.discriminator.learning_rate=1e30", "optimizer.generator.learning_rate=1e30"],
            "error: the generator's samples became non-finite in step 1; training stopped and no checkpoint "
            "was written yet",
            ["state.json"],
            [],  # no grid of NaN pixels
        ),
    ],
    ids=["loss", "samples"],
)
def test_divergence_stops_at_once_and_keeps_the_last_good_checkpoint(tmp_path, huge, error, kept, grids):
    # A learning rate this large sends the weights to infinity in the first step; a
    # checkpoint after every step shows which one is kept.
    result = run_stage(
        "train", *TINY, "data.limit=256", "train.iterations=8", "train.interval=1", *huge, cwd=tmp_path, check=False
    )
    assert last_line_error(result) == (
        f"{error}; lower the learning rate, or rerun with train.resume=never to start over"
    )
    assert sorted(p.name for p in (tmp_path / "models/checkpoints").iterdir()) == kept
    assert sorted(p.name for p in (tmp_path / "reports/samples").glob("*.png")) == grids
    assert mlflow_client(tmp_path).get_run(training_run_id(tmp_path)).info.status == "FAILED"


def test_a_run_continues_into_a_new_schedule_only_while_its_steps_took_the_same_rates(tmp_path):
    """A run of constant learning rates continues into a longer one whose decay begins after
    its last step, to the weights a straight run of that schedule ends with, and so does a
    branch of it (train.branch_from); a decay that begins earlier, or a run whose decay has
    begun, is another run (the refusal says which train.lr_decay would continue it)."""
    straight, cooled = tmp_path / "straight", tmp_path / "cooled"
    for workdir in (straight, cooled):
        workdir.mkdir()
    profile = [*TINY, "data.limit=128"]  # 2 steps an epoch
    run_stage("train", *profile, "train.epochs=2", "train.lr_decay=0.5", cwd=straight)
    run_stage("train", *profile, cwd=cooled)
    too_early = run_stage(
        "train", *profile, "train.epochs=2", "train.lr_decay=0.75", "train.resume=always", cwd=cooled, check=False
    )
    assert last_line_error(too_early) == (
        "error: config key train.lr_decay: 0.75 does not match the checkpoint in models/checkpoints (0.0; 1 more keys "
        "differ); train.lr_decay <= 0.5 continues it (its 2 steps took constant rates)"
    )
    # Another run branches from it the same way: a copy of its checkpoint, as a new MLflow run.
    branch = ["paths.models_dir=branch/models", "paths.reports_dir=branch/reports", "train.branch_from=models"]
    refused = run_stage("train", *profile, *branch, "train.epochs=2", "train.lr_decay=0.75", cwd=cooled, check=False)
    assert last_line_error(refused) == last_line_error(too_early)  # it names the other run's checkpoint
    assert not (cooled / "branch/models/checkpoints/state.json").exists()
    run_stage("train", *profile, *branch, "train.epochs=2", "train.lr_decay=0.5", cwd=cooled)
    continued = run_stage("train", *profile, "train.epochs=2", "train.lr_decay=0.5", cwd=cooled)
    assert "continuing (both rates fall from step 2 of 4)" in continued.stdout + continued.stderr
    assert _weights_sha256(cooled) == _weights_sha256(cooled / "branch") == _weights_sha256(straight)
    branch_run = mlflow_client(cooled).get_run(training_run_id(cooled / "branch"))
    assert branch_run.data.tags["branched_from"] == training_run_id(cooled) != branch_run.info.run_id
    d_loss = mlflow_client(cooled).get_metric_history(branch_run.info.run_id, "d_loss")
    assert sorted(metric.step for metric in d_loss) == [1, 2]  # its first epoch from the other run's history

    # Its steps 2 and 3 took falling rates: a longer decaying run is another run.
    longer = run_stage(
        "train", *profile, "train.epochs=3", "train.lr_decay=0.5", "train.resume=always", cwd=cooled, check=False
    )
    assert last_line_error(longer) == (
        "error: config key train.total_steps: 6 does not match the checkpoint in models/checkpoints (4)"
    )
    assert _state(cooled)["epochs"] == 2


def test_changed_data_or_settings_are_not_resumed_silently(tmp_path):
    run_stage("train", *TINY, "data.limit=128", cwd=tmp_path)
    # The prepared data changed behind the checkpoint's back (as re-preparing other raw files would).
    manifest_path = tmp_path / "data/prepared/mnist/manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["content_sha256"] = hashlib.sha256(b"other images").hexdigest()
    manifest_path.write_text(json.dumps(manifest))

    refused = last_line_error(run_stage("train", *TINY, "data.limit=128", "train.epochs=2", cwd=tmp_path, check=False))
    assert refused.startswith("error: models/checkpoints: the checkpoint was trained on other data")
    assert refused.endswith("rerun with train.resume=never to start over on the new data")
    assert _state(tmp_path)["epochs"] == 1  # the checkpoint is left alone

    run_stage("train", *TINY, "data.limit=128", "train.resume=never", cwd=tmp_path)
    mismatch = last_line_error(
        run_stage(
            "train", *TINY, "data.limit=128", "model.latent_dim=64", "train.resume=always", cwd=tmp_path, check=False
        )
    )
    assert (
        mismatch == "error: config key model.latent_dim: 64 does not match the checkpoint in models/checkpoints (100)"
    )


def test_read_only_or_full_output_folders_fail_cleanly(tmp_path, mount_tmpfs):
    read_only = mount_tmpfs("read_only", "ro,size=1m")
    error = last_line_error(
        run_stage("train", *TINY, f"paths.models_dir={read_only}/models", cwd=tmp_path, check=False)
    )
    assert error == f"error: {read_only}/models: output folder is not writable (Read-only file system)"
    assert not (tmp_path / "data").exists()  # refused before preparing or training anything

    full = mount_tmpfs("full", "size=256k")  # the tiny dataset's shards need ~8 MB
    error = last_line_error(run_stage("prepare", *TINY, f"paths.prepared_dir={full}", cwd=tmp_path, check=False))
    assert error.startswith(f"error: {full}/mnist: cannot write the prepared dataset: ")
    assert not list(full.iterdir())  # no half-written dataset, temp folder or lock file

    run_stage("prepare", *TINY, cwd=tmp_path)
    small = mount_tmpfs("small", "size=1m")  # room for the start, not for a checkpoint
    error = last_line_error(run_stage("train", *TINY, f"paths.models_dir={small}", cwd=tmp_path, check=False))
    # The first big write (the best generator or the checkpoint) names itself and fails.
    assert error.startswith(f"error: {small}/") and error.endswith("No space left on device")
    assert not list(small.rglob("*.tmp*")) and not list(small.rglob("ckpt-*"))  # nothing partial left


def _weights_sha256(workdir: Path) -> str:
    digest = hashlib.sha256()
    for key, array in sorted(_final_weights(workdir).items()):
        digest.update(key.encode() + array.tobytes())
    return digest.hexdigest()


def test_same_config_and_seed_give_identical_weights_in_separate_processes_and_when_resumed(tmp_path):
    """Two straight 2-epoch runs and one stopped after epoch 1 and resumed, each in its own
    processes: the same bytes in every weight, optimizer slot and RNG state."""
    hashes = set()
    for name, lengths in (("straight", [2]), ("again", [2]), ("resumed", [1, 2])):
        workdir = tmp_path / name
        workdir.mkdir()
        for epochs in lengths:
            run_stage("train", *TINY, "data.limit=256", f"train.epochs={epochs}", own_process=True, cwd=workdir)
        assert _state(workdir)["checkpoint"] == "ckpt-000000008.npz" and len(_final_weights(workdir)) > 40
        hashes.add(_weights_sha256(workdir))
    assert len(hashes) == 1  # generator, discriminator, optimizer slots, RNG states: all equal
    other_seed = tmp_path / "other_seed"
    other_seed.mkdir()
    run_stage("train", *TINY, "data.limit=256", "train.epochs=2", "train.seed=7", own_process=True, cwd=other_seed)
    assert _weights_sha256(other_seed) not in hashes


def _weights(path: Path) -> list[np.ndarray]:
    import keras

    return keras.models.load_model(path, compile=False).get_weights()


def _same_weights(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_a_kill_between_any_two_writes_leaves_the_record_and_the_files_consistent(tmp_path):
    """Extending a finished 1-epoch run to 2 epochs commits epoch 2 in four renames into the
    checkpoint folder (its best generator, the checkpoint, the record naming both, the record
    again with the outputs). A SIGKILL before each in turn, each rerun resuming from what the
    last one left: the best generator the record names is always the one of the epoch it
    says, and the shipped outputs are those of an uninterrupted run."""
    base, straight, chaos = tmp_path / "base", tmp_path / "straight", tmp_path / "chaos"
    profile = [*TINY, "train.precision=fp32"]  # the same epochs on every host class
    base.mkdir()
    run_stage("train", *profile, own_process=True, cwd=base)
    best_of_epoch = {1: _weights(base / "models/generator_best.keras")}
    for copy in (straight, chaos):
        shutil.copytree(base, copy)
    run_stage("train", *profile, "train.epochs=2", own_process=True, cwd=straight)
    expected = json.loads((straight / "reports/train_metrics.json").read_text())
    assert expected["best_epoch"] == 2, "epoch 2 must improve on epoch 1 for this test to test anything"
    best_of_epoch[2] = _weights(straight / "models/generator_best.keras")

    checkpoints = chaos / "models/checkpoints"
    for kill_at in (1, 2, 3, 4):
        killed = subprocess.run(
            [
                sys.executable,
                str(REPO / "tests/killed_before_rename.py"),
                str(kill_at),
                str(checkpoints),
                str(REPO / "src/train.py"),
                *profile,
                "train.epochs=2",
            ],
            cwd=chaos,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        state = _state(chaos)
        assert (checkpoints / state["checkpoint"]).is_file()
        named = checkpoints / state["best"]["file"]
        assert _same_weights(_weights(named), best_of_epoch[state["best"]["epoch"]]), (kill_at, state["best"])

    run_stage("train", *profile, "train.epochs=2", own_process=True, cwd=chaos)
    shipped = json.loads((chaos / "reports/train_metrics.json").read_text())
    assert (shipped["best_epoch"], shipped["best_fid"]) == (expected["best_epoch"], expected["best_fid"])
    assert _same_weights(_weights(chaos / "models/generator_best.keras"), best_of_epoch[2])
    assert _same_weights(_weights(chaos / "models/generator.keras"), _weights(straight / "models/generator.keras"))
