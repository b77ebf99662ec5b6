"""The real entry points as a user runs them: stages, resume, MLflow contents, one-line errors."""

import json
import shutil
import subprocess
import sys

import imageio.v3 as iio
import mlflow
import numpy as np
import pytest
from conftest import (
    DEFAULT_ADAM,
    REPO,
    TINY,
    as_project,
    last_line_error,
    mlflow_client,
    run_stage,
    subprocess_env,
    sweep_runs,
)

from dcgan.quality import QUALITY_KEYS

pytestmark = pytest.mark.slow


def test_prepare_train_resume_evaluate(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # MLflow's 10 s: longer than a tiny epoch
    run_stage("prepare", *TINY, cwd=tmp_path)
    first = run_stage("train", *TINY, cwd=tmp_path)
    run_id = json.loads((tmp_path / "models/run.json").read_text())["mlflow_run_id"]

    # Asking for one more epoch continues the same run from its checkpoint.
    second = run_stage("train", *TINY, "train.epochs=2", cwd=tmp_path)
    assert "resuming from" in second.stdout and "resuming" not in first.stdout  # Hydra logs to stdout
    assert json.loads((tmp_path / "models/run.json").read_text())["mlflow_run_id"] == run_id
    history = (tmp_path / "reports/train_history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,iteration,d_loss,g_loss,d_real,d_fake,images_per_sec")
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2"]
    assert sorted(p.name for p in (tmp_path / "reports/samples").iterdir()) == ["epoch_0001.png", "epoch_0002.png"]

    run_stage("evaluate", *TINY, "train.epochs=2", cwd=tmp_path)
    figures = tmp_path / "reports/figures"
    assert sorted(p.name for p in figures.iterdir()) == [
        "interpolation.gif",
        "least_confident.png",
        "most_confident.png",
        "progress.gif",
        "samples.png",
    ]
    metrics = json.loads((tmp_path / "reports/metrics.json").read_text())
    assert set(metrics) == {
        "d_real",
        "d_fake",
        "d_accuracy",
        "diversity_ratio",
        "num_samples",
        *QUALITY_KEYS,
        "classifier_accuracy",
        "best",
    }
    best_epoch = json.loads((tmp_path / "models/checkpoints/state.json").read_text())["best"]["epoch"]
    assert metrics["best"]["epoch"] == best_epoch and set(metrics["best"]) == {"epoch", *QUALITY_KEYS}
    assert metrics["num_samples"] == 200 and 0.0 <= metrics["d_accuracy"] <= 1.0

    client = mlflow_client(tmp_path)
    run = client.get_run(run_id)
    champion = client.get_model_version_by_alias("dcgan-mnist", "champion")  # the first evaluated: the champion
    assert champion.tags["run_id"] == run_id and float(champion.tags["fid"]) == metrics["fid"]
    assert run.info.status == "FINISHED"
    assert run.data.params["optimizer.generator.learning_rate"] == str(DEFAULT_ADAM["generator"]["learning_rate"])
    assert run.data.params["data.limit"] == "512" and run.data.params["train.epochs"] == "1"
    assert run.data.tags["train.epochs"] == "2"  # the resumed run's target
    assert run.data.tags["overrides"] == "debug=tiny"
    assert run.info.run_name == "mnist dcgan_mnist adam: debug=tiny"  # what it trains, and how it was asked
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert "git_commit" in run.data.tags or "version.keras" in run.data.tags
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)
    assert len(run.data.tags["data.manifest_sha256"]) == 64
    [data] = run.inputs.dataset_inputs  # the run page's "Datasets"
    assert (data.dataset.name, data.dataset.digest) == ("mnist", run.data.tags["data.manifest_sha256"][:36])
    assert "data/prepared/mnist" in data.dataset.source and {t.key: t.value for t in data.tags}["images"] == "512"
    for key in ("d_loss", "g_loss", "d_real", "d_fake", "images_per_sec"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2], key
    assert "eval_diversity_ratio" in run.data.metrics
    assert {*QUALITY_KEYS, "classifier_accuracy"} <= set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(run_id, "progress/fid")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"samples", "evaluation", "model_summary.txt", "data", "config.yaml"} <= artifacts
    diagrams = {a.path for a in client.list_artifacts(run_id, "architecture")}
    assert diagrams == (
        {"architecture/generator.png", "architecture/discriminator.png"} if shutil.which("dot") else set()
    )
    assert {a.path for a in client.list_artifacts(run_id, "samples")} == {
        "samples/epoch_0001.png",
        "samples/epoch_0002.png",
    }
    assert "evaluation/samples.png" in {a.path for a in client.list_artifacts(run_id, "evaluation")}
    images = [
        a.path for a in client.list_artifacts(run_id, "images")
    ]  # mlflow.log_image by step, for the UI's image view
    assert len([path for path in images if path.startswith("images/samples") and path.endswith(".png")]) == 2

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    logged = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert {m.source_run_id for m in logged} == {run_id}
    assert sorted(m.tags["epoch"] for m in logged) == ["1", "2"]  # one per training invocation
    final = next(m for m in logged if m.tags["epoch"] == "2")
    model = mlflow.pyfunc.load_model(final.model_uri)
    assert tuple(model.metadata.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 100)
    assert model.predict(np.zeros((3, 100), np.float32)).shape == (3, 28, 28, 1)


def test_changed_settings_start_over_instead_of_resuming(tmp_path):
    first = run_stage("train", *TINY, "data.limit=128", cwd=tmp_path)  # prepares the data itself
    assert "not prepared yet; preparing it first" in first.stdout
    rerun = run_stage("train", *TINY, "data.limit=128", "optimizer=rmsprop", cwd=tmp_path)
    assert "is from a different run (differs in: optimizer" in rerun.stdout
    assert "resuming" not in rerun.stdout


def test_training_by_iterations_with_an_interval(tmp_path):
    run_stage("train", *TINY, "data.limit=128", "train.iterations=6", "train.interval=3", cwd=tmp_path)
    rows = [line.split(",")[:2] for line in (tmp_path / "reports/train_history.csv").read_text().splitlines()[1:]]
    assert rows == [["1", "3"], ["2", "6"]]  # 2 steps per pass over 128 images: epochs cross passes
    bad = last_line_error(
        run_stage("train", *TINY, "data.limit=128", "train.iterations=7", "train.interval=3", cwd=tmp_path, check=False)
    )
    assert bad == "error: config key train.interval: 3 steps do not divide the 7 steps of train.iterations"
    run_stage(
        "train",
        *TINY,
        "data.limit=128",
        "train.epochs=4",
        "train.interval_passes=2",
        "train.resume=never",
        cwd=tmp_path,
    )
    rows = [line.split(",")[:2] for line in (tmp_path / "reports/train_history.csv").read_text().splitlines()[1:]]
    assert rows == [["1", "4"], ["2", "8"]]  # a checkpoint and grid every 2 passes of 2 steps


def test_user_errors_are_one_line(tmp_path):
    untrained = last_line_error(run_stage("evaluate", *TINY, cwd=tmp_path, check=False))
    assert untrained == "error: models/run.json: not found; run the train stage first (dvc repro train)"

    run_stage("prepare", *TINY, "data.limit=100", cwd=tmp_path)
    too_big = last_line_error(
        run_stage("train", *TINY, "data.limit=100", "train.batch_size=128", cwd=tmp_path, check=False)
    )
    assert too_big.startswith("error: config key train.batch_size: 128 exceeds the 100 training images")

    unknown = last_line_error(run_stage("train", *TINY, "optimizer=adamw", cwd=tmp_path, check=False))
    assert (
        unknown
        == "error: In 'config': Could not find 'optimizer/adamw'; Available options in 'optimizer': adam; rmsprop"
    )
    typo = last_line_error(run_stage("train", *TINY, "train.epoch=3", cwd=tmp_path, check=False))
    assert (
        typo == "error: Could not override 'train.epoch'.; To append to your config use +train.epoch=3; Key 'epoch' "
        "is not in struct"
    )

    # A preset is `experiment=NAME`; `+experiment=NAME` (how presets were chosen before) still works.
    # Its model is dcgan, whose schema has max_filters and checks it (dcgan_mnist has no such key).
    for preset in ("experiment=mnist32", "+experiment=mnist32"):
        checked = last_line_error(run_stage("train", preset, "model.max_filters=32", cwd=tmp_path, check=False))
        assert checked == "error: config key model.max_filters: must be >= model.filters (64), got 32"

    server = last_line_error(run_stage("train", *TINY, "tracking.uri=http://127.0.0.1:9", cwd=tmp_path, check=False))
    assert server.startswith("error: MLflow tracking store http://127.0.0.1:9 is unreachable")
    assert not [
        p for p in (tmp_path / "models").rglob("*") if p.is_file()
    ]  # failed before any classifier or training work


def test_entry_points_work_in_the_project_folder_from_any_folder_inside_it_and_refuse_outside(tmp_path):
    def started_in(folder, stage, *overrides):
        return subprocess.run(
            [sys.executable, str(REPO / f"src/{stage}.py"), *overrides],
            cwd=folder,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )

    project = tmp_path / "project"
    inside = project / "src"
    inside.mkdir(parents=True)
    as_project(project)
    assert started_in(inside, "prepare", *TINY, "data.limit=16").returncode == 0  # as `cd src && python prepare.py`
    assert (project / "data/prepared/mnist/manifest.json").is_file() and not list(inside.iterdir())

    stray = tmp_path / "stray"
    stray.mkdir()
    assert last_line_error(started_in(stray, "train", *TINY)) == (
        f"error: {stray}: not inside a project (no dvc.yaml here or in a parent folder); cd {REPO}, "
        "or make this folder one by copying dvc.yaml into it"
    )
    assert not list(stray.iterdir())


def test_sweep_over_datasets_and_optimizers(tmp_path):
    """Four jobs in one Hydra multirun: each prepares what it lacks and trains on its own."""
    sweep = [*TINY, "data.limit=128", "model=dcgan", "data=mnist32,flowers64", "optimizer=adam,rmsprop"]
    run_stage("train", "-m", *sweep, cwd=tmp_path)
    client = mlflow_client(tmp_path)
    parent, runs = sweep_runs(client, "dcgan-tiny")
    assert parent.info.status == "FINISHED" and parent.data.tags["jobs"] == "4"
    assert parent.data.params["data"] == "mnist32,flowers64" and parent.data.params["optimizer"] == "adam,rmsprop"
    best = min(runs, key=lambda run: run.data.metrics["best_fid"])
    assert (
        parent.data.metrics["best_fid"] == best.data.metrics["best_fid"]
        and parent.data.tags["best_run_id"] == best.info.run_id
    )
    assert parent.data.tags["best_overrides"] == best.data.tags["overrides"]
    # The comparison figure: the FID plot above a row of the 4 jobs' last grids (gray and RGB).
    figure = iio.imread(client.download_artifacts(parent.info.run_id, "sweep_comparison.png", str(tmp_path)))
    assert figure.shape[:2] == (650, 1040)
    combos = sorted((r.data.params["data.name"], r.data.params["optimizer.name"]) for r in runs)
    assert combos == [("flowers64", "adam"), ("flowers64", "rmsprop"), ("mnist32", "adam"), ("mnist32", "rmsprop")]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags["sweep_dir"] for r in runs}) == 1
    assert sorted(r.data.tags["sweep_job"] for r in runs) == ["0", "1", "2", "3"]
    assert "flowers64 dcgan rmsprop: debug=tiny data.limit=128 model=dcgan data=flowers64 optimizer=rmsprop" in {
        r.info.run_name for r in runs
    }
    # Each job trained from scratch into its own folder; the datasets were prepared once each.
    assert len(list((tmp_path / "multirun").glob("*/*/*/models/generator.keras"))) == 4
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["classifier"]  # shared by the jobs
    for folder in (
        "models/classifier",
        "data/prepared",
    ):  # the lock files the jobs took turns by are gone with the last holder
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == ["flowers64", "mnist32"]


def test_mirrored_strategy_trains_on_two_logical_cpus(tmp_path):
    """The multi-device path GPUs use, run on the CPU split into two logical devices."""
    run_stage("prepare", *TINY, "data.limit=256", cwd=tmp_path)
    result = run_stage(
        "train",
        *TINY,
        "data.limit=256",
        "train.strategy=mirrored",
        "train.cpu_devices=2",
        "train.ema_decay=0.99",
        own_process=True,
        cwd=tmp_path,
    )
    assert "Using MirroredStrategy with devices" in result.stdout + result.stderr
    row = json.loads((tmp_path / "reports/train_metrics.json").read_text())
    # Per-sample mean losses (Keras' 1/replicas loss scaling undone for logging), D(x) in (0, 1).
    assert 0.5 < row["d_loss"] < 2.5 and 0.2 < row["g_loss"] < 2.5 and 0.0 < row["d_real"] < 1.0
