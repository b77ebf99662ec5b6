"""A Hydra multirun as one MLflow parent run, each job a child run under it.

Driven by the Hydra callback ``dcgan.sweep_callback.MLflowSweepRun``. The parent run is created when the
sweep starts (its overrides as params) and its id handed to the jobs through the
environment, which parallel launchers' worker processes inherit; when the sweep ends it
gets the best job's ``best_fid`` and overrides, a figure comparing the jobs
(``sweep_comparison.png``), and FAILED if any job did not finish or the sweep stopped early
(a failed job, Ctrl-C).
"""

from __future__ import annotations

import atexit
import logging
import os
import tempfile
import textwrap
from pathlib import Path

import imageio.v3 as iio
import mlflow
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig

from dcgan import tracking, viz
from dcgan.callbacks import PROGRESS
from dcgan.config import OVERRIDES_TAG, validate
from dcgan.errors import UserError

log = logging.getLogger(__name__)


def start_parent_run(config: DictConfig) -> None:
    """The sweep's parent run, its id in the environment for the jobs to find."""
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
    # Hydra skips end_parent_run (its on_multirun_end) when a job's failure stops the sweep: end it at exit then.
    atexit.register(_end, run.info.run_id, stopped_early=True)


def end_parent_run() -> None:
    """The sweep's parent run completed once all its jobs ran."""
    run_id = os.environ.pop(tracking.PARENT_RUN_ENV, None)
    if run_id is not None:
        atexit.unregister(_end)
        _end(run_id, stopped_early=False)


def _end(run_id: str, stopped_early: bool) -> None:
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
    try:
        _log_comparison(client, run_id, scored)
    except (MlflowException, OSError) as exc:
        log.warning("MLflow parent run %s: no comparison figure: %s", run_id, exc)
    finished = not stopped_early and jobs and all(job.info.status == "FINISHED" for job in jobs)
    client.set_terminated(run_id, "FINISHED" if finished else "FAILED")


COMPARED_GRIDS = 12  # the best jobs' sample grids in the comparison figure (a search has many)


def distinguishing_labels(overrides: dict[str, str]) -> dict[str, str]:
    """Each job's overrides without those every job shares (``debug=tiny``) and a search's
    bookkeeping (``search.*``): what tells it apart, as its label, keys to their last two
    parts and sampled floats to 3 digits; a job with none of its own keeps its id."""
    tokens = {key: [t for t in text.split() if not t.startswith("search.")] for key, text in overrides.items()}
    shared = set.intersection(*map(set, tokens.values())) if len(tokens) > 1 else set()
    return {key: " ".join(_short(t) for t in words if t not in shared) or key for key, words in tokens.items()}


def _short(override: str) -> str:
    key, separator, value = override.partition("=")
    if not separator:
        return override
    key = ".".join(key.split(".")[-2:])
    try:
        return f"{key}={float(value):.3g}" if "." in value and len(value) > 6 else f"{key}={value}"
    except ValueError:
        return f"{key}={value}"


def without_artifact_progress_bars():
    """No MLflow progress bar while downloading: one per small grid would end the sweep's output."""
    return tracking.mlflow_settings({MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name: "false"})


LEGEND_LABEL = 40  # longer labels (a search's) name the job in the legend and stand in full under its grid


def _log_comparison(client: mlflow.MlflowClient, run_id: str, jobs: list) -> None:
    """The jobs' in-training FID against training minutes and their last sample grids (the
    best ``COMPARED_GRIDS``), as one figure on the parent run."""
    if not jobs:
        return
    jobs = sorted(jobs, key=lambda job: job.data.metrics["best_fid"])
    labels = distinguishing_labels({job.info.run_id: job.data.tags.get(OVERRIDES_TAG, "") for job in jobs})
    curves, grids = {}, {}
    with tempfile.TemporaryDirectory() as folder, without_artifact_progress_bars():
        for job in jobs:
            label = labels[job.info.run_id]
            name = f"job {job.data.tags.get('sweep_job', job.info.run_id[:8])}"
            seconds = {m.step: m.value for m in client.get_metric_history(job.info.run_id, "epoch_seconds")}
            fids = sorted((m.step, m.value) for m in client.get_metric_history(job.info.run_id, PROGRESS + "fid"))
            minutes = [sum(s for step, s in seconds.items() if step <= epoch) / 60 for epoch, _ in fids]
            curves[label if len(label) <= LEGEND_LABEL else name] = (minutes, [fid for _, fid in fids])
            samples = sorted(a.path for a in client.list_artifacts(job.info.run_id, "samples") if not a.is_dir)
            if samples and len(grids) < COMPARED_GRIDS:
                grid = client.download_artifacts(job.info.run_id, samples[-1], folder)
                title = label if len(label) <= LEGEND_LABEL else f"{name}: {label}"
                wrapped = textwrap.fill(title, 34, break_long_words=False)
                grids[f"{wrapped}\n({Path(samples[-1]).stem})"] = iio.imread(grid)
        figure = Path(folder) / "sweep_comparison.png"
        shown = f"; the best {COMPARED_GRIDS} jobs' samples" if len(jobs) > COMPARED_GRIDS else ""
        viz.comparison_figure(figure, f"{len(jobs)} jobs by best FID{shown}", curves, grids)
        client.log_artifact(run_id, str(figure))
