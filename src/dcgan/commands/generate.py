"""The generate tool: a trained generator (a file, a run's, or the registry's) -> images
from given seeds or latent vectors, as a grid, PNGs, a .npy and an interpolation GIF."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import keras
import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

from dcgan import tracking, viz
from dcgan.config import Config, GenerateConfig
from dcgan.data.prepare import normalization
from dcgan.data.tfrecords import to_uint8
from dcgan.errors import UserError
from dcgan.files import atomic_write, check_writable, staged_outputs
from dcgan.models import load_trained
from dcgan.quality import samples_of

log = logging.getLogger(__name__)

RUN_ID = re.compile(r"(?:runs:/)?([0-9a-f]{32})(?:/.*)?")


def load_generator(config: Config) -> keras.Model:
    """``generate.model`` as a Keras model taking (N, latent size) noise to (N, H, W, C) images."""
    source = config.generate.model
    run = RUN_ID.fullmatch(source)
    if run or source.startswith("models:/"):
        tracking.connect(config.tracking)
        uri = tracking.generator_uri(run.group(1)) if run else source
        try:
            model = mlflow.tensorflow.load_model(uri)
        except (MlflowException, OSError) as exc:
            reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise UserError(
                f"generate.model={source}: cannot load it from {mlflow.get_tracking_uri()} ({reason})"
            ) from None
    else:
        model = load_trained(Path(source))
    if len(model.input_shape) != 2 or len(model.output_shape) != 4:
        raise UserError(
            f"generate.model={source}: not a generator (takes {model.input_shape}, gives {model.output_shape})"
        )
    return model


def latent_vectors(settings: GenerateConfig, latent_dim: int) -> tuple[np.ndarray, list[str]]:
    """(N x latent_dim latents, a name per image): from ``latents`` or one per seed, each
    seed's vector drawn by its own generator, so it does not depend on the other seeds."""
    if settings.latents:
        path = Path(settings.latents)
        try:
            latents = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"generate.latents={path}: not a readable .npy file ({exc})") from None
        if latents.ndim != 2 or latents.shape[1] != latent_dim:
            raise UserError(f"generate.latents={path}: shape {latents.shape}, the generator takes (N, {latent_dim})")
        return latents.astype(np.float32), [f"latent_{i:05d}" for i in range(len(latents))]
    seeds = settings.seeds or list(range(settings.seed, settings.seed + settings.num_images))
    return np.stack([_latent(seed, latent_dim, settings.truncation) for seed in seeds]), [
        f"seed_{seed}" for seed in seeds
    ]


def _latent(seed: int, latent_dim: int, truncation: float | None) -> np.ndarray:
    """A standard-normal latent; with ``truncation``, components beyond it are drawn again."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal(latent_dim)
    while truncation is not None and (outside := np.abs(latent) > truncation).any():
        latent[outside] = rng.standard_normal(int(outside.sum()))
    return latent.astype(np.float32)


def generate_images(config: Config) -> Path:
    """Write what ``config.generate`` asks for into its ``out_dir``; returns that folder."""
    settings = config.generate
    generator = load_generator(config)
    latents, names = latent_vectors(settings, generator.input_shape[-1])
    if settings.interpolation_steps and len(latents) < 2:
        raise UserError(f"generate.interpolation_steps: an interpolation needs at least 2 latents, got {len(latents)}")
    out = Path(settings.out_dir)
    check_writable(out)
    pixels = {"normalization": normalization(config.data.pixel_range)}
    images = to_uint8(samples_of(generator, latents), pixels)
    columns = int(np.ceil(np.sqrt(len(images))))
    with staged_outputs(out) as staging:
        if settings.grid:
            viz.save_png(staging / "grid.png", viz.upscale(viz.grid(images, columns), viz.GRID_UPSCALE))
        if settings.png:
            for name, image in zip(names, images):
                viz.save_png(staging / f"{name}.png", image)
        if settings.npy:
            buffer = io.BytesIO()
            np.save(buffer, images)
            atomic_write(staging / "images.npy", lambda handle: handle.write(buffer.getvalue()))
        if settings.interpolation_steps:
            walk = viz.latent_walk(latents, settings.interpolation_steps)
            frames = to_uint8(samples_of(generator, walk), pixels)
            frames = [viz.upscale(frame, viz.GRID_UPSCALE * 2) for frame in frames]
            viz.save_gif(staging / "interpolation.gif", frames, fps=config.evaluate.gif_fps)
    log.info("generated %d images from %s into %s", len(images), settings.model, out)
    return out
