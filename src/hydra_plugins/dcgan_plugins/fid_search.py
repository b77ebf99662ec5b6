"""Hydra sweeper ``hydra/sweeper=fid_search``: an Optuna search on the in-training FID,
trials pruned while they train (the logic: ``dcgan.search``). Hydra finds sweepers only
in the ``hydra_plugins`` package, hence this module.

Hydra imports every plugin module whenever it starts (DVC's config composition too), so
this one imports Optuna and the project only when a search runs."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf


@dataclass
class FidSearchConf:
    _target_: str = "hydra_plugins.dcgan_plugins.fid_search.FidSearchSweeper"
    study_name: str = "fid_search"
    storage: str = "optuna/fid_search.journal"  # the study's journal, relative to the working directory
    n_trials: int = 8
    n_jobs: int = 1  # trials asked for at a time, run side by side by a parallel launcher
    seed: int = 0  # the sampler's (TPE)
    startup_trials: int = 2  # trials that run to the end before any is pruned (Optuna's median pruner)
    warmup_epochs: int = 1  # epochs (with a budget: tenths of it) a trial runs before it can be pruned
    budget_minutes: Optional[float] = None  # minutes of training per trial: FID at a fixed budget
    # A new study's first trial is the composed config's own values of the searched keys (those
    # inside the space; the rest sampled): the search starts from the recipe it is to beat.
    config_first: bool = True
    params: dict[str, str] = field(default_factory=dict)  # key: search-space expression
    best_params: str = "reports/best_params.yaml"


ConfigStore.instance().store(group="hydra/sweeper", name="fid_search", node=FidSearchConf, provider="dcgan")


class FidSearchSweeper(Sweeper):
    def __init__(
        self,
        study_name: str,
        storage: str,
        n_trials: int,
        n_jobs: int,
        seed: int,
        startup_trials: int,
        warmup_epochs: int,
        budget_minutes: Optional[float],
        config_first: bool,
        params: Any,
        best_params: str,
    ):
        self.study_name = study_name
        self.storage = str(Path(storage).resolve())  # trials may run in other working directories
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.seed = seed
        self.pruning = [f"search.startup_trials={startup_trials}", f"search.warmup_epochs={warmup_epochs}"]
        if budget_minutes is not None:
            self.pruning.append(f"search.budget_minutes={budget_minutes}")
        self.config_first = config_first
        self.params = OmegaConf.to_container(params) if isinstance(params, DictConfig) else dict(params or {})
        self.best_params = Path(best_params)

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> list:
        import optuna  # here, not at the top: see the module docstring

        from dcgan import search

        space, fixed = search.search_space(self.params, arguments)
        study = optuna.create_study(
            study_name=self.study_name,
            storage=search.storage(self.storage),
            load_if_exists=True,
            direction="minimize",
            sampler=optuna.samplers.TPESampler(seed=self.seed),
        )  # pruning is decided in the trials (dcgan.search.ReportToStudy), with self.pruning
        search.end_abandoned_trials(study)
        if self.config_first and not study.trials:
            study.enqueue_trial(search.values_within(space, self.config))
        returns, job_index = [], 0
        while (done := len(study.get_trials(deepcopy=False, states=search.FINISHED))) < self.n_trials:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - done))]
            batch = [
                [
                    *fixed,
                    *(f"{key}={value}" for key, value in trial.params.items()),
                    f"search.storage={self.storage}",
                    f"search.study={self.study_name}",
                    f"search.trial={trial.number}",
                    *self.pruning,
                ]
                for trial in trials
            ]
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=job_index)
            job_index += len(batch)
            for trial, result in zip(trials, results):
                search.tell(study, trial, _outcome(result))
            returns.extend(results)
        states = [trial.state.name.lower() for trial in study.trials]
        print(
            f"study {self.study_name}: " + ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))), flush=True
        )
        commands = search.write_best(self.best_params, study, fixed)
        if commands:
            print(
                f"best: trial {study.best_trial.number}, FID {study.best_value:.3f}; rerun it with (also in "
                f"{self.best_params}):\n{commands}",
                flush=True,
            )
        return returns


def _outcome(result: JobReturn) -> Any:
    """A job's return value, or the exception it failed with."""
    if result.status == JobStatus.COMPLETED:
        return result.return_value
    try:
        return result.return_value  # raises the job's exception
    except Exception as exc:
        return exc
