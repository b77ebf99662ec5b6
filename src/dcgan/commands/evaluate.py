"""The evaluate stage: trained generator -> sample grid, GIFs, metrics.json, logged to MLflow."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import imageio.v3 as iio
import keras
import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

from dcgan import metrics, quality, tracking, viz
from dcgan.checkpoints import CheckpointDir
from dcgan.config import Config, EvaluateConfig
from dcgan.data.pipeline import load_images
from dcgan.data.tfrecords import load_manifest, split_sha256, to_uint8
from dcgan.errors import UserError
from dcgan.files import check_writable, locked, staged_outputs, write_json
from dcgan.models import RERUN_TRAIN, load_trained
from dcgan.paths import TrainOutputs, outputs_of
from dcgan.quality import QUALITY_KEYS, Scorer, samples_of

log = logging.getLogger(__name__)


def _training_run_id(run_info: Path) -> str:
    """The MLflow run the train stage recorded, checked to exist in the current store."""
    if not run_info.is_file():
        raise UserError(f"{run_info}: not found; {RERUN_TRAIN}")
    try:
        run_id = json.loads(run_info.read_text())["mlflow_run_id"]
    except (ValueError, TypeError, KeyError):
        raise UserError(
            f"{run_info}: not the train stage's run record (no mlflow_run_id); rerun the train stage (dvc repro "
            "-f train)"
        ) from None
    try:
        mlflow.get_run(run_id)
    except MlflowException:
        raise UserError(f"{run_info}: MLflow run {run_id} is not in the store {mlflow.get_tracking_uri()}") from None
    return run_id


def _progress_frames(samples_dir: Path) -> list[np.ndarray]:
    paths = sorted(samples_dir.glob("epoch_*.png"))
    if not paths:
        raise UserError(f"{samples_dir}: no per-epoch sample grids; run the train stage first")
    return [iio.imread(path) for path in paths]


def _confidence_grids(scorer: Scorer, fake: np.ndarray, manifest: dict, figures: Path, columns: int) -> None:
    """The generated samples the classifier is most and least sure of (mode collapse and
    garbage show up here first)."""
    order = np.argsort(-scorer.confidence(fake), kind="stable")
    count = columns * columns
    for name, chosen in (("most_confident.png", order[:count]), ("least_confident.png", order[::-1][:count])):
        viz.save_png(figures / name, viz.upscale(viz.grid(to_uint8(fake[chosen], manifest), columns), viz.GRID_UPSCALE))


def evaluate(config: Config) -> dict:
    """Full-size quality metrics of the last generator (and of the best-FID one), sample
    grids and GIFs, into ``reports/`` (DVC metrics) and the training's MLflow run."""
    tracking.connect(config.tracking)
    trained = outputs_of(config.paths)
    check_writable(trained.models_dir)
    with locked(trained.models_dir):
        return _evaluate(config, trained)


def _evaluate(config: Config, trained: TrainOutputs) -> dict:
    run_id = _training_run_id(trained.run_info)
    reports = Path(config.paths.reports_dir)
    check_writable(reports)
    prepared = Path(config.paths.prepared_dir) / config.data.name
    manifest = load_manifest(prepared)
    generator = load_trained(trained.generator)
    rng = np.random.default_rng(config.evaluate.seed)

    real, _ = load_images(prepared, manifest, "test", config.evaluate.num_samples)
    noise = rng.standard_normal((len(real), generator.input_shape[-1])).astype(np.float32)
    fake = samples_of(generator, noise)
    scores = _diagnostics(load_trained(trained.discriminator), real, fake)
    # The figures replace the old ones as a set, then metrics.json: an interrupted or failed
    # evaluation leaves the previous outputs (they persist under DVC).
    with staged_outputs(reports / "figures") as figures:
        _draw_figures(generator, fake, rng, manifest, trained, figures, config.evaluate)
        scorer = quality.scorer_for(config.metrics, config.paths.classifier_dir, prepared, manifest, len(real))
        if scorer is not None:
            scores.update(_quality(scorer, fake, noise, trained))
            _confidence_grids(scorer, fake, manifest, figures, config.evaluate.grid_size)
    write_json(reports / "metrics.json", scores)
    _log_to_training_run(run_id, scores, reports)
    if config.evaluate.register and "fid" in scores:
        scored_on = {
            "data": config.data.name,
            "test_split": split_sha256(manifest, "test"),
            "features": config.metrics.features,
            "num_samples": str(scores["num_samples"]),
        }
        tracking.register_generator(run_id, scores["fid"], scored_on)
    log.info("evaluation: %s", json.dumps(scores))
    return scores


def _diagnostics(discriminator: keras.Model, real: np.ndarray, fake: np.ndarray) -> dict:
    """How the final D tells real from generated, and how varied the samples are."""
    scores = metrics.discriminator_scores(
        discriminator.predict(real, batch_size=256, verbose=0), discriminator.predict(fake, batch_size=256, verbose=0)
    )
    scores["diversity_ratio"] = metrics.diversity_ratio(real[:2000], fake[:2000])  # O(n^2): 2,000 are plenty
    scores["num_samples"] = len(real)
    return scores


def _draw_figures(
    generator: keras.Model,
    fake: np.ndarray,
    rng: np.random.Generator,
    manifest: dict,
    trained: TrainOutputs,
    figures: Path,
    settings: EvaluateConfig,
) -> None:
    """A grid of new samples, the training-progress GIF and a 4x4 grid of latent walks."""
    grid_count = settings.grid_size**2
    viz.save_png(
        figures / "samples.png",
        viz.upscale(viz.grid(to_uint8(fake[:grid_count], manifest), settings.grid_size), viz.GRID_UPSCALE),
    )
    viz.save_gif(figures / "progress.gif", _progress_frames(trained.samples), settings.gif_fps)
    latent_dim = generator.input_shape[-1]
    points = rng.standard_normal((16, settings.interpolation_points, latent_dim))
    walks = np.stack([viz.latent_walk(p, settings.interpolation_steps) for p in points], axis=1)  # frames x 16 x latent
    frames = to_uint8(samples_of(generator, walks.reshape(-1, latent_dim).astype(np.float32)), manifest)
    frames = frames.reshape(len(walks), 16, *frames.shape[1:])
    viz.save_gif(
        figures / "interpolation.gif",
        [viz.upscale(viz.grid(f, 4), viz.GRID_UPSCALE) for f in frames],
        settings.gif_fps * 2,
    )


def _quality(scorer: Scorer, fake: np.ndarray, noise: np.ndarray, trained: TrainOutputs) -> dict:
    """FID & co. of the last generator and, under ``best``, of the best-FID epoch's."""
    scores = scorer.score(fake)
    if scorer.space.accuracy is not None:
        scores["classifier_accuracy"] = scorer.space.accuracy
    state = CheckpointDir(trained.checkpoints, keep=1).load_state()
    if state is not None and state.best is not None:
        scores["best"] = {
            "epoch": state.best["epoch"],
            **scorer.score(samples_of(load_trained(trained.best_generator), noise)),
        }
    return scores


def _log_to_training_run(run_id: str, scores: dict, reports: Path) -> None:
    with mlflow.start_run(run_id=run_id):
        # Quality metrics under their own names; the rest would collide with training's curves.
        named = (*QUALITY_KEYS, "classifier_accuracy")
        mlflow.log_metrics(
            {key if key in named else f"eval_{key}": value for key, value in scores.items() if key != "best"}
        )
        mlflow.log_metrics(
            {f"best_{key}": value for key, value in scores.get("best", {}).items() if key in QUALITY_KEYS}
        )
        mlflow.log_artifacts(str(reports / "figures"), artifact_path="evaluation")
        mlflow.log_artifact(str(reports / "metrics.json"), artifact_path="evaluation")
