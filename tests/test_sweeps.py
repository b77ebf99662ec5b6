"""Sweeps beyond one job at a time: parallel jobs on one machine (joblib), jobs as separate
processes (submitit's local executor, the SLURM launcher's stand-in; a two-node Ray cluster on
loopback), their share of the cores, and the MLflow parent run that groups them."""

import keras
import optuna
import pytest
import yaml
from conftest import REPO, TINY, compose_config, last_line_error, mlflow_client, run_stage, sweep_runs
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from sweeps import loopback_ray_cluster

from dcgan import search
from dcgan.cli import job_threads
from dcgan.config import SearchConfig, flatten, to_dict
from dcgan.errors import UserError
from dcgan.search import search_space


@pytest.mark.parametrize(
    "launcher, threads",
    [
        (
            {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"},
            None,
        ),  # one job at a time: all cores
        ({"n_jobs": 2}, 4),
        ({"n_jobs": 16}, 1),
        ({"n_jobs": -1}, 1),  # joblib: as many jobs as cores
        ({"cpus_per_task": 3}, 3),  # submitit: what each task was given
        ({"num_cpus": 2, "address": None}, 2),  # Ray: what each task asks for
    ],
)
def test_each_parallel_job_gets_its_share_of_the_cores(launcher, threads, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(8)))
    assert job_threads(OmegaConf.create(launcher)) == threads


def test_slurm_launcher_config_composes():
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.cpus_per_task, launcher.timeout_min) == ("gpu", 8, 120)


@pytest.mark.slow
def test_parallel_sweep_shares_the_cores_and_the_sqlite_store(tmp_path):
    """Four jobs at once through the joblib launcher, all logging to one SQLite store: each
    on its share of the cores, and none of their runs, params, metrics or artifacts lost."""
    run_stage("prepare", *TINY, "data.limit=128", cwd=tmp_path)  # once, not by four jobs queueing for its lock
    sweep = [
        *TINY,
        "data.limit=128",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=4",
        "optimizer=adam,rmsprop",
        "train.seed=1,2",
    ]
    run_stage("train", "-m", *sweep, cwd=tmp_path)
    client = mlflow_client(tmp_path)
    parent, runs = sweep_runs(client, "dcgan-tiny")
    assert parent.info.status == "FINISHED" and len(runs) == 4
    assert sorted((r.data.params["optimizer.name"], r.data.params["train.seed"]) for r in runs) == [
        ("adam", "1"),
        ("adam", "2"),
        ("rmsprop", "1"),
        ("rmsprop", "2"),
    ]
    assert {r.data.params["train.threads"] for r in runs} == {"1"}  # 2 cores among 4 jobs: one thread each
    for name in ("adam", "rmsprop"):  # every param of each run logged (the optimizers' settings differ)
        expected = set(flatten(to_dict(compose_config([f"optimizer={name}"]))))
        tags = {"tracking.tags.overrides", "tracking.tags.sweep_dir", "tracking.tags.sweep_job"}  # set per job
        assert all(set(r.data.params) == expected | tags for r in runs if r.data.params["optimizer.name"] == name)
    for run in runs:
        assert run.info.status == "FINISHED"
        assert {"best_fid", "final_fid", "d_loss", "progress/fid"} <= set(run.data.metrics)
        assert "samples/epoch_0001.png" in {a.path for a in client.list_artifacts(run.info.run_id, "samples")}


@pytest.mark.slow
def test_a_failed_job_fails_the_sweep_after_the_others_ran(tmp_path):
    run_stage("prepare", *TINY, "data.limit=128", cwd=tmp_path)
    result = run_stage("train", "-m", *TINY, "data.limit=128", "train.batch_size=4096,64", cwd=tmp_path, check=False)
    assert result.returncode == 1
    assert last_line_error(result) == (
        "error: a sweep job failed: config key train.batch_size: 4096 exceeds the 128 "
        "training images in data/prepared/mnist"
    )
    parent, runs = sweep_runs(mlflow_client(tmp_path), "dcgan-tiny")
    assert [r.data.params["train.batch_size"] for r in runs] == ["64"] and runs[0].info.status == "FINISHED"
    assert parent.info.status == "FAILED" and parent.data.metrics["best_fid"] == runs[0].data.metrics["best_fid"]


def assert_two_jobs_in_one_store(workdir):
    """The adam,rmsprop sweep's two runs finished on one thread each, under one parent run."""
    parent, runs = sweep_runs(mlflow_client(workdir), "dcgan-tiny")
    assert parent.info.status == "FINISHED" and parent.data.tags["jobs"] == "2"
    assert sorted(r.data.params["optimizer.name"] for r in runs) == ["adam", "rmsprop"]
    assert all(r.info.status == "FINISHED" and r.data.params["train.threads"] == "1" for r in runs)


@pytest.mark.slow
def test_submitit_local_launcher_runs_each_job_in_its_own_process(tmp_path):
    run_stage("prepare", *TINY, "data.limit=128", cwd=tmp_path)
    sweep = [
        *TINY,
        "data.limit=128",
        "hydra/launcher=submitit_local",
        "hydra.launcher.cpus_per_task=1",
        "optimizer=adam,rmsprop",
    ]
    run_stage("train", "-m", *sweep, cwd=tmp_path)
    assert_two_jobs_in_one_store(tmp_path)
    assert len(list((tmp_path / "multirun").glob("*/*/.submitit/*/*_result.pkl"))) == 2


@pytest.mark.slow
def test_ray_launcher_runs_the_jobs_on_a_two_node_cluster(tmp_path):
    """A head and a worker node, separate `ray start` processes on loopback with one CPU
    each: the two jobs (one CPU each) run on both nodes at once, into the one store."""
    run_stage("prepare", *TINY, "data.limit=128", cwd=tmp_path)
    with loopback_ray_cluster(nodes=2, cpus_per_node=1) as address:
        result = run_stage(
            "train",
            "-m",
            *TINY,
            "data.limit=128",
            "hydra/launcher=ray",
            f"hydra.launcher.address={address}",
            "optimizer=adam,rmsprop",
            cwd=tmp_path,
        )
    assert f"Ray launcher: 2 jobs on {address}" in result.stdout + result.stderr
    assert_two_jobs_in_one_store(tmp_path)
    stopped = run_stage(
        "train", "-m", *TINY, "hydra/launcher=ray", f"hydra.launcher.address={address}", cwd=tmp_path, check=False
    )
    assert last_line_error(stopped) == (
        f"error: hydra.launcher.address={address}: no Ray head answers there "
        "(Connection refused); start one with `ray start --head`"
    )


def test_search_space_reads_hydras_sweep_grammar():
    space, fixed = search_space(
        {
            "lr": "tag(log, interval(1e-4, 1e-3))",
            "slope": "interval(0.05, 0.3)",
            "batch": "choice(32, 64)",
            "width": "int(interval(16, 64))",
            "blocks": "range(2, 5)",
        },
        ["debug=tiny", "optimizer=adam,rmsprop"],
    )
    assert space["lr"] == FloatDistribution(1e-4, 1e-3, log=True) and space["slope"] == FloatDistribution(0.05, 0.3)
    assert space["batch"] == CategoricalDistribution([32, 64]) and space["optimizer"] == CategoricalDistribution(
        ["adam", "rmsprop"]
    )
    assert space["width"] == IntDistribution(16, 64) and space["blocks"] == IntDistribution(2, 4)
    assert fixed == ["debug=tiny"]
    with pytest.raises(UserError, match="search space key lr: 'lr=0.1' is not choice"):
        search_space({"lr": "0.1"}, [])


def test_a_trial_behind_the_median_is_pruned(tmp_path):
    journal = str(tmp_path / "study.journal")
    study = optuna.create_study(study_name="s", storage=search.storage(journal))
    first = study.ask()
    for epoch_number, fid in enumerate([80.0, 40.0, 20.0], start=1):
        first.report(fid, epoch_number)
    study.tell(first, 20.0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    for fid, pruned in ((30.0, False), (120.0, True)):
        study.ask()
        report = search.ReportToStudy(
            SearchConfig(storage=journal, study="s", trial=len(study.trials) - 1, startup_trials=1, warmup_epochs=0)
        )
        report.set_model(model)
        model.stop_training = False
        report.on_epoch_end(0, {"progress/fid": fid})
        assert report.pruned == pruned == model.stop_training
        assert study.trials[-1].intermediate_values == {1: fid}


@pytest.mark.slow
def test_fid_search_records_failures_and_resumes(tmp_path):
    """A short Optuna search: every trial reports its FID per epoch; stopped and started
    again with more trials, it continues the same study; trials that fail (batch 256 > the
    128 images) are recorded as failed and the search goes on."""
    space = tmp_path / "conf/hparams_search/lr_search.yaml"
    space.parent.mkdir(parents=True)
    space.write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/sweeper: fid_search\n"
        "hydra:\n  sweeper:\n    study_name: lr_search\n    startup_trials: 1\n    warmup_epochs: 0\n"
        "    params:\n      optimizer.generator.learning_rate: tag(log, interval(1e-5, 1e-2))\n"
    )
    journal, best = tmp_path / "study.journal", tmp_path / "best_params.yaml"
    search_args = [
        "-m",
        f"--config-dir={tmp_path / 'conf'}",
        "hparams_search=lr_search",
        *TINY,
        "data.limit=128",
        "train.epochs=3",
        "metrics.train_samples=50",
        f"hydra.sweeper.storage={journal}",
        f"hydra.sweeper.best_params={best}",
    ]
    run_stage("prepare", *TINY, "data.limit=128", cwd=tmp_path)
    first = run_stage("train", *search_args, "hydra.sweeper.n_trials=3", cwd=tmp_path)
    study = optuna.load_study(study_name="lr_search", storage=search.storage(str(journal)))
    assert [t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials] == [True] * 3
    assert study.trials[0].state == TrialState.COMPLETE and len(study.trials[0].intermediate_values) == 3
    assert all(len(t.intermediate_values) < 3 for t in study.trials if t.state == TrialState.PRUNED)
    saved = yaml.safe_load(best.read_text())
    assert saved["best_fid"] == study.best_value and saved["commands"]["train"] in first.stdout
    assert saved["commands"]["train"].startswith(
        "python src/train.py hparams_search=lr_search debug=tiny data.limit=128 train.epochs=3"
    )

    second = run_stage("train", *search_args, "hydra.sweeper.n_trials=5", "train.batch_size=256", cwd=tmp_path)
    study = optuna.load_study(study_name="lr_search", storage=search.storage(str(journal)))
    assert [t.state for t in study.trials[3:]] == [TrialState.FAIL] * 2, second.stderr[-2000:]  # two more, not five

    client = mlflow_client(tmp_path)  # debug=tiny, applied last, names the experiment
    runs = client.search_runs([client.get_experiment_by_name("dcgan-tiny").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 2 and all(p.data.params["hparams_search"] == "lr_search" for p in parents)
    # Each trial that trained is a child run; the failed ones stopped before theirs began.
    assert sorted(r.data.params["search.trial"] for r in runs if r not in parents) == ["0", "1", "2"]
