"""Sweeps beyond one job at a time: parallel jobs on one machine (joblib), jobs as separate
processes (submitit's local executor, the SLURM launcher's stand-in; a two-node Ray cluster on
loopback), their share of the cores, and the MLflow parent run that groups them."""

import os
import re
import subprocess

import keras
import optuna
import pytest
import yaml
from conftest import REPO, TINY, compose_config, last_line_error, mlflow_client, run_stage, sweep_runs
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from sweeps import loopback_ray_cluster

from dcgan import search
from dcgan.cli import _apply_hydra_context, job_threads
from dcgan.config import SearchConfig, flatten, run_identity, to_dict
from dcgan.errors import UserError
from dcgan.search import search_space
from dcgan.sweeps import without_artifact_progress_bars


def compose_sweep(overrides):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides, return_hydra_config=True)


@pytest.mark.parametrize(
    "launcher, threads",
    [
        ([], None),  # the basic launcher, one job at a time: all cores
        (["hydra/launcher=parallel"], 4),  # its default, 2 jobs at once
        (["hydra/launcher=parallel", "hydra.launcher.n_jobs=16"], 1),
        (["hydra/launcher=parallel", "hydra.launcher.n_jobs=-1"], 1),  # joblib: as many jobs as cores
        (["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=3"], 3),  # what each task was given
        (["hydra/launcher=slurm_local"], 1),
        (["hydra/launcher=ray", "hydra.launcher.num_cpus=2"], 2),  # what each task asks Ray for
    ],
)
def test_each_parallel_job_gets_its_share_of_the_cores(launcher, threads, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(8)))
    assert job_threads(compose_sweep(launcher).hydra) == threads


def test_every_launcher_config_declares_its_cpu_share():
    names = sorted(path.stem for path in (REPO / "conf/hydra/launcher").glob("*.yaml"))
    assert {"parallel", "ray", "slurm", "slurm_local"} <= set(names)
    for name in names:
        assert job_threads(compose_sweep([f"hydra/launcher={name}"]).hydra) is not None, name


def test_a_parallel_launcher_without_a_share_is_named_in_a_warning(caplog, monkeypatch):
    sweep = compose_sweep(["hydra/launcher=joblib"])
    sweep.hydra.mode = RunMode.MULTIRUN
    sweep.hydra.runtime.output_dir = "multirun/0"
    sweep.hydra.job.num = 0
    monkeypatch.setattr(HydraConfig.instance(), "cfg", OmegaConf.masked_copy(sweep, "hydra"))
    config = compose_config()
    _apply_hydra_context(config)
    assert config.train.threads is None
    assert "hydra/launcher=joblib declares no CPU share per job" in caplog.text


@pytest.mark.parametrize("before", [None, "true"])
def test_mlflows_progress_bars_are_off_only_while_the_comparison_downloads(before, monkeypatch):
    name = MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name
    if before is None:
        monkeypatch.delenv(name, raising=False)
    else:
        monkeypatch.setenv(name, before)
    with without_artifact_progress_bars():
        assert MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.get() is False
    assert os.environ.get(name) == before


def test_slurm_launcher_config_composes():
    launcher = compose_sweep(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"]).hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.cpus_per_task, launcher.timeout_min) == ("gpu", 8, 120)


@pytest.mark.slow
def test_parallel_sweep_shares_the_cores_and_the_sqlite_store(tmp_path):
    """Four jobs at once through the parallel (joblib) launcher, all logging to one SQLite store: each
    on its share of the cores, and none of their runs, params, metrics or artifacts lost."""
    run_stage("prepare", *TINY, "data.limit=128", cwd=tmp_path)  # once, not by four jobs queueing for its lock
    sweep = [
        *TINY,
        "data.limit=128",
        "hydra/launcher=parallel",
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
def test_slurm_local_launcher_runs_each_job_in_its_own_process(tmp_path):
    run_stage("prepare", *TINY, "data.limit=128", cwd=tmp_path)
    sweep = [
        *TINY,
        "data.limit=128",
        "hydra/launcher=slurm_local",
        "optimizer=adam,rmsprop",
    ]
    run_stage("train", "-m", *sweep, cwd=tmp_path)
    assert_two_jobs_in_one_store(tmp_path)
    assert len(list((tmp_path / "multirun").glob("*/*/.submitit/*/*_result.pkl"))) == 2


@pytest.mark.slow
def test_slurm_launcher_submits_each_job_to_a_slurm_cluster(slurm, tmp_path, monkeypatch):
    """`hydra/launcher=slurm` as on a cluster's login node: submitit's `sbatch` jobs on the
    one-machine SLURM cluster the fixture starts."""
    for name, value in slurm[0].items():
        monkeypatch.setenv(name, value)
    run_stage("prepare", *TINY, "data.limit=128", cwd=tmp_path)
    sweep = [
        *TINY,
        "data.limit=128",
        "hydra/launcher=slurm",
        "hydra.launcher.cpus_per_task=1",  # what the job's training is given (a sweep's share)
        "hydra.launcher.mem_gb=1",
        "optimizer=adam,rmsprop",
    ]
    run_stage("train", "-m", *sweep, cwd=tmp_path)
    assert_two_jobs_in_one_store(tmp_path)
    [array] = {folder.name.split("_")[0] for folder in (tmp_path / "multirun").glob("*/*/.submitit/[0-9]*_*")}
    record = subprocess.run(["scontrol", "show", "job", array], capture_output=True, text=True, check=True).stdout
    # SLURM's own record: one job array, a task per sweep job, each completed on one CPU
    tasks = sorted(re.findall(r"ArrayTaskId=(\d+) .*?JobState=(\w+) .*?NumCPUs=(\d+)", record, re.S))
    assert tasks == [("0", "COMPLETED", "1"), ("1", "COMPLETED", "1")], record


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
            "steps": "range(800, 8500, 400)",
        },
        ["debug=tiny", "optimizer=adam,rmsprop"],
    )
    assert space["lr"] == FloatDistribution(1e-4, 1e-3, log=True) and space["slope"] == FloatDistribution(0.05, 0.3)
    assert space["batch"] == CategoricalDistribution([32, 64]) and space["optimizer"] == CategoricalDistribution(
        ["adam", "rmsprop"]
    )
    assert space["width"] == IntDistribution(16, 64) and space["blocks"] == IntDistribution(2, 4)
    assert space["steps"] == IntDistribution(800, 8400, step=400)  # range's last value, not stop - 1
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


def test_a_budgeted_trial_reports_tenths_of_its_budget_and_stops_past_it(tmp_path):
    journal = str(tmp_path / "study.journal")
    study = optuna.create_study(study_name="s", storage=search.storage(journal))
    study.ask()
    report = search.ReportToStudy(SearchConfig(storage=journal, study="s", trial=0, budget_minutes=1.0))
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    report.set_model(model)
    report.set_params({"epochs": 10})
    model.stop_training = False
    epochs = [(20.0, 90.0), (2.0, None), (2.0, 70.0), (26.0, 50.0)]  # (seconds, FID or unscored)
    stopped = []
    for index, (seconds, fid) in enumerate(epochs):
        report.on_epoch_end(index, {"epoch_seconds": seconds, **({"progress/fid": fid} if fid else {})})
        stopped.append(model.stop_training)
    # 20 s = tenth 4; 24 s also tenth 4 (its first report stands); 50 s = tenth 9, and another 26 s would overrun.
    assert study.trials[0].intermediate_values == {4: 90.0, 9: 50.0}
    assert stopped == [False, False, False, True] and not report.pruned


def test_the_per_minute_search_hands_its_budget_to_every_trial():
    sweeper = instantiate(compose_sweep(["hparams_search=fid_per_minute"]).hydra.sweeper)
    assert "search.budget_minutes=5.0" in sweeper.pruning and "search.warmup_epochs=3" in sweeper.pruning
    space, fixed = search_space(sweeper.params, [])
    assert space["train.iterations"] == IntDistribution(800, 8000, step=400) and fixed == []
    assert compose_config(["hparams_search=fid_per_minute", *sweeper.pruning]).search.budget_minutes == 5.0  # a trial's


def test_a_search_starts_from_the_config_and_the_command_line_fixes_keys():
    """A new study's first trial is the composed config's values (those inside the space);
    a fixed value on the command line takes its key out of the space."""
    sweeper = instantiate(compose_sweep(["hparams_search=fid_per_minute"]).hydra.sweeper)
    space, fixed = search_space(sweeper.params, ["train.batch_size=64", "model.leaky_slope=0.1"])
    assert "train.batch_size" not in space and "model.leaky_slope" not in space
    assert fixed == ["train.batch_size=64", "model.leaky_slope=0.1"]
    config = compose_sweep(["hparams_search=fid_per_minute", "train.r1_gamma=5.0", *fixed])
    first = search.values_within(space, config)
    # train.iterations is unset (null) and r1_gamma 5.0 lies outside the space: both sampled.
    assert first == {
        "train.lr_decay": 0.5,
        "optimizer.generator.learning_rate": 4e-4,
        "optimizer.discriminator.learning_rate": 2e-4,
        "optimizer.generator.beta_1": 0.5,
        "optimizer.discriminator.beta_1": 0.5,
        "train.ema_decay": 0.999,
    }


def test_the_cooldown_search_branches_every_trial_from_the_finished_run():
    sweeper = instantiate(compose_sweep(["hparams_search=cooldown"]).hydra.sweeper)
    space, fixed = search_space(sweeper.params, [])
    assert space == {"train.lr_decay": FloatDistribution(0.0, 0.25)} and fixed == []
    config = compose_sweep(["hparams_search=cooldown"])
    assert search.values_within(space, config) == {"train.lr_decay": 0.0}  # first: no cool-down at all
    trial = compose_config(["hparams_search=cooldown", "train.lr_decay=0.25", *sweeper.pruning])
    assert (trial.train.branch_from, trial.train.epochs, trial.search.warmup_epochs) == ("models", 12, 11)
    assert run_identity(trial) == run_identity(compose_config(["train.lr_decay=0.25"]))  # the default's run


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
    # The first trial is the recipe the search starts from: the composed config's learning rate.
    assert study.trials[0].params == {
        "optimizer.generator.learning_rate": compose_config(TINY).optimizer.generator.learning_rate
    }
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
