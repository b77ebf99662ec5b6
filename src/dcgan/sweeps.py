"""A Hydra multirun as one MLflow parent run, each job a child run under it.

Registered as a Hydra callback in ``conf/config.yaml``. The parent run is created when the
sweep starts (its overrides as params) and its id handed to the jobs through the
environment, which parallel launchers' worker processes inherit; when the sweep ends it
gets the best job's ``best_fid`` and overrides, and FAILED if any job did not finish or
the sweep stopped early (a failed job, Ctrl-C).
"""

from __future__ import annotations

import atexit
import logging
import os

import mlflow
from hydra.experimental.callback import Callback
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig

from dcgan import tracking
from dcgan.config import OVERRIDES_TAG, validate
from dcgan.errors import UserError

log = logging.getLogger(__name__)


class MLflowSweepRun(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if config.hydra.job.name != "train":  # the other stages start no runs of their own
            return
        try:
            settings = validate(config)
            tracking.connect(settings.tracking)
        except UserError as exc:  # every job will report it, with its one-line error
            log.warning("no MLflow parent run for this sweep: %s", exc)
            return
        sweep = list(config.hydra.overrides.task)
        client = mlflow.MlflowClient()
        run = client.create_run(
            tracking.experiment_id(settings.tracking.experiment),
            run_name=f"sweep: {' '.join(sweep)}",
            tags={**tracking.provenance_tags(), OVERRIDES_TAG: " ".join(sweep), "sweep_dir": config.hydra.sweep.dir},
        )
        for override in sweep:
            key, _, values = override.partition("=")
            client.log_param(run.info.run_id, key.lstrip("+~"), values)
        os.environ[tracking.PARENT_RUN_ENV] = run.info.run_id
        # Hydra skips on_multirun_end when a job's failure stops the sweep: end it at exit then.
        atexit.register(self._end, run.info.run_id, stopped_early=True)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        run_id = os.environ.pop(tracking.PARENT_RUN_ENV, None)
        if run_id is not None:
            atexit.unregister(self._end)
            self._end(run_id, stopped_early=False)

    def _end(self, run_id: str, stopped_early: bool) -> None:
        """The best job's score and overrides onto the parent run, and its final status."""
        client = mlflow.MlflowClient()
        try:
            parent = client.get_run(run_id)
            jobs = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'")
        except MlflowException as exc:
            log.warning("MLflow parent run %s not completed: %s", run_id, exc)
            return
        scored = [job for job in jobs if "best_fid" in job.data.metrics]
        if scored:
            best = min(scored, key=lambda job: job.data.metrics["best_fid"])
            client.log_metric(run_id, "best_fid", best.data.metrics["best_fid"])
            client.set_tag(run_id, "best_run_id", best.info.run_id)
            client.set_tag(run_id, "best_overrides", best.data.tags.get(OVERRIDES_TAG, ""))
        client.set_tag(run_id, "jobs", str(len(jobs)))
        finished = not stopped_early and jobs and all(job.info.status == "FINISHED" for job in jobs)
        client.set_terminated(run_id, "FINISHED" if finished else "FAILED")
