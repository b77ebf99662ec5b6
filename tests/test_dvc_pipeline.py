"""The real DVC pipeline in a temp copy of the repo: repro, no-op repro, partial reruns,
Hydra-composed `dvc exp run -S`, and queued experiments landing in the project's MLflow store."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import TRAIN_OUTPUTS, dvc_project, run_dvc_queue, sh, venv_env
from mlflow import MlflowClient

from dcgan.quality import QUALITY_KEYS

pytestmark = pytest.mark.slow

TINY = ["debug=tiny", "data.limit=256"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return dvc_project(tmp_path_factory.mktemp("project"), TINY)


def ran_stages(output: str) -> list[str]:
    return [stage for stage in ("prepare", "classifier", "train", "evaluate") if f"Running stage '{stage}'" in output]


def mlflow_runs(project: Path, experiment: str = "dcgan-tiny"):
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    return client, client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def test_repro_runs_the_pipeline_then_nothing(project):
    first = sh("dvc", "repro", cwd=project)
    assert ran_stages(first) == ["prepare", "classifier", "train", "evaluate"]
    for path in (
        "data/prepared/mnist/manifest.json",
        "models/generator.keras",
        "models/generator_best.keras",
        "models/classifier/mnist/classifier.keras",
        "models/discriminator.keras",
        "models/checkpoints/state.json",
        "reports/train_history.csv",
        "reports/train_metrics.json",
        "reports/metrics.json",
        "reports/figures/samples.png",
        "reports/figures/progress.gif",
        "reports/figures/interpolation.gif",
    ):
        assert (project / path).is_file(), path

    metrics = json.loads(sh("dvc", "metrics", "show", "--json", cwd=project))
    workspace = next(iter(metrics.values()))["data"]  # the workspace entry
    evaluated = workspace["reports/metrics.json"]["data"]
    assert {*QUALITY_KEYS, "classifier_accuracy", "diversity_ratio"} <= set(evaluated)
    assert evaluated["best"]["epoch"] == 1 and "fid" in evaluated["best"]
    assert "g_loss" in workspace["reports/train_metrics.json"]["data"]

    client, runs = mlflow_runs(project)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    assert runs[0].data.params["data.limit"] == "256"
    assert "eval_d_accuracy" in runs[0].data.metrics and "fid" in runs[0].data.metrics
    assert [m.step for m in client.get_metric_history(run_id, "progress/fid")] == [1]
    assert "evaluation/progress.gif" in {a.path for a in client.list_artifacts(run_id, "evaluation")}

    second = sh("dvc", "repro", cwd=project)
    assert ran_stages(second) == []
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=project)


def stages_to_rerun(project: Path) -> list[str]:
    status = json.loads(sh("dvc", "status", "--json", cwd=project))
    return sorted(name.split(":")[-1] for name in status)


def test_status_lists_only_the_stages_that_read_a_change(project):
    viz = project / "src/dcgan/viz.py"
    original = viz.read_text()
    viz.write_text(original + "\n# edited\n")  # how figures are drawn: evaluate only
    assert stages_to_rerun(project) == ["evaluate"]
    viz.write_text(original)
    set_param(project, "evaluate.grid_size", 4)
    assert stages_to_rerun(project) == ["evaluate"]
    sh("git", "checkout", "params.yaml", cwd=project)
    set_param(project, "tracking.experiment", "renamed")  # names only new runs
    assert stages_to_rerun(project) == []
    sh("git", "checkout", "params.yaml", cwd=project)


PIPELINE_OUTPUTS = (*TRAIN_OUTPUTS, "reports/metrics.json")


def outputs(project: Path) -> dict[str, bytes]:
    """The pipeline's outputs in the workspace, by path."""
    return {path: (project / path).read_bytes() for path in PIPELINE_OUTPUTS}


def test_ctrl_c_in_evaluate_under_dvc_keeps_its_previous_outputs(project):
    """Ctrl-C reaches DVC and the stage (one process group); the evaluation's outputs persist."""
    sh("git", "checkout", "params.yaml", cwd=project)
    repro_completes(project)
    figures = sorted((project / "reports/figures").iterdir())
    before = {path.name: path.read_bytes() for path in [project / "reports/metrics.json", *figures]}
    set_param(project, "evaluate.seed", 8)  # the default is 7
    # Ctrl-C's disposition as in a terminal: a test run started in the background (`make test &`)
    # would hand its children SIGINT ignored, and Python then keeps it ignored.
    repro = subprocess.Popen(
        ["dvc", "repro"],
        cwd=project,
        env=venv_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    while not list((project / "reports").glob(".figures.*.tmp")):  # the new figures are being drawn
        assert repro.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(repro.pid, signal.SIGINT)
    repro.communicate(timeout=300)
    assert repro.returncode != 0
    after = {
        path.name: path.read_bytes()
        for path in [project / "reports/metrics.json", *sorted((project / "reports/figures").iterdir())]
    }
    assert after == before
    sh("git", "checkout", "params.yaml", cwd=project)


def set_param(project: Path, key: str, value) -> None:
    params_path = project / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    *parents, leaf = key.split(".")
    section = params
    for name in parents:
        section = section[name]
    section[leaf] = value
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))


def repro_completes(project: Path) -> list[str]:
    """`dvc repro` exits 0 with every output present and `dvc status` clean; the stages it ran."""
    output = sh("dvc", "repro", cwd=project)
    assert all((project / path).is_file() for path in PIPELINE_OUTPUTS)
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=project)
    return ran_stages(output)


def test_changed_training_param_reruns_train_and_evaluate_only(project):
    set_param(project, "train.seed", 43)  # defines the run: it starts over
    assert repro_completes(project) == ["train", "evaluate"]
    sh("git", "checkout", "params.yaml", cwd=project)


def test_param_changes_of_every_class_complete_and_so_does_a_rerun_after_a_failed_train(project):
    # After a finished repro (the previous test's), one change per class of docs/reproducibility.md:
    for key, value in (
        ("metrics.train_samples", 150),  # the scores: the best and final generators are rescored
        ("train.keep_checkpoints", 3),  # no effect on the run: outputs rebuilt from its state
        ("data.shards", 3),  # the same records in other files: prepare reruns, training does not
    ):
        set_param(project, key, value)
        assert "train" in repro_completes(project), key

    # A refusing train stage leaves every output as it was: they persist, and it replaces them only as a set.
    before = outputs(project)
    set_param(project, "train.batch_size", 100000)
    result = subprocess.run(["dvc", "repro"], cwd=project, capture_output=True, text=True, env=venv_env())
    assert result.returncode != 0 and "train.batch_size: 100000 exceeds" in result.stdout + result.stderr
    assert outputs(project) == before
    set_param(project, "train.batch_size", 64)
    set_param(project, "train.epochz", 2)  # an unknown key, hand-edited into params.yaml
    result = subprocess.run(["dvc", "repro"], cwd=project, capture_output=True, text=True, env=venv_env())
    assert result.returncode != 0 and "config key train.epochz: Key 'epochz' not in 'TrainConfig'" in result.stderr
    assert outputs(project) == before
    sh("git", "checkout", "params.yaml", cwd=project)
    set_param(project, "train.seed", 43)
    assert repro_completes(project) == ["train", "evaluate"]
    assert outputs(project) != before

    sh("dvc", "exp", "run", *(f"-S{o}" for o in TINY), "-S", "metrics.kid_subsets=5", cwd=project)
    assert all((project / path).is_file() for path in PIPELINE_OUTPUTS)
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=project)
    sh("git", "checkout", "params.yaml", cwd=project)


def test_exp_run_composes_hydra_overrides(project):
    output = sh("dvc", "exp", "run", "-n", "rms", *(f"-S{o}" for o in TINY), "-S", "optimizer=rmsprop", cwd=project)
    assert ran_stages(output) == ["train", "evaluate"]
    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=project))
    names = [exp.get("name") for baseline in shown for exp in baseline.get("experiments") or []]
    assert "rms" in names
    _, runs = mlflow_runs(project)
    assert runs[-1].data.params["optimizer.name"] == "rmsprop"
    assert runs[-1].info.run_name == "rms"  # named after the DVC experiment


def test_queued_sweep_lands_in_the_project_mlflow_store(project):
    """Two queued experiments run by two DVC workers at once, both logging to the project's
    SQLite store."""
    # A new experiment name: the queued runs create it from inside DVC's temp copies.
    overrides = [*TINY, "train.seed=7", "tracking.experiment=queued", "optimizer=adam,rmsprop"]
    sh("dvc", "exp", "run", "--queue", *(f"-S{o}" for o in overrides), cwd=project)
    status = run_dvc_queue(project)
    assert status.count("Success") == 2, status

    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=project))
    queued = [
        exp["revs"][0]["data"]
        for baseline in shown
        for exp in baseline.get("experiments") or []
        if exp["revs"][0]["data"]["params"]["params.yaml"]["data"]["train"]["seed"] == 7
    ]
    assert sorted(d["params"]["params.yaml"]["data"]["optimizer"]["name"] for d in queued) == ["adam", "rmsprop"]
    assert all("diversity_ratio" in d["metrics"]["reports/metrics.json"]["data"] for d in queued)

    client, new = mlflow_runs(project, "queued")
    assert sorted(r.data.params["optimizer.name"] for r in new) == ["adam", "rmsprop"]
    assert all(r.info.status == "FINISHED" and "dvc_exp_name" in r.data.tags for r in new)
    assert all(r.info.run_name == r.data.tags["dvc_exp_name"] for r in new)
    # Artifacts too outlive the queue's temp copies: they live in the project.
    for run in new:
        assert run.info.artifact_uri.startswith((project / "mlartifacts").as_uri())
        assert {"final_fid", "eval_diversity_ratio"} <= set(run.data.metrics)
        assert "samples/epoch_0001.png" in {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
        assert Path(run.info.artifact_uri.removeprefix("file://"), "evaluation", "samples.png").is_file()


def test_a_longer_run_continues_and_a_shorter_one_is_refused(project):
    """Last: lowering the length of a finished run is refused, which would fail later tests."""
    sh("git", "checkout", "params.yaml", cwd=project)
    repro_completes(project)
    set_param(project, "train.epochs", 2)
    assert repro_completes(project) == ["train", "evaluate"]
    assert json.loads((project / "models/checkpoints/state.json").read_text())["epochs"] == 2
    before = outputs(project)
    set_param(project, "train.epochs", 1)
    result = subprocess.run(["dvc", "repro"], cwd=project, capture_output=True, text=True, env=venv_env())
    assert result.returncode != 0
    assert (
        "error: models/checkpoints: holds a run trained for 8 steps (2 epochs), more than the 4 asked for"
        in result.stderr
    )
    set_param(project, "tracking.uri", "http://127.0.0.1:9")
    result = subprocess.run(["dvc", "repro"], cwd=project, capture_output=True, text=True, env=venv_env())
    assert result.returncode != 0 and "error: MLflow tracking store http://127.0.0.1:9 is unreachable" in result.stderr
    assert outputs(project) == before  # both refusals kept the outputs
