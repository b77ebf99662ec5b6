"""Pictures of a generator: image grids, GIFs of grids over time, latent-space walks."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np

from dcgan.files import atomic_write

GRID_UPSCALE = 3  # saved grids are enlarged so small images stay visible in viewers


def grid(images: np.ndarray, columns: int, pad: int = 2) -> np.ndarray:
    """Tile N HxWxC uint8 images into one image, ``columns`` per row, with a white border."""
    count, height, width, channels = images.shape
    rows = -(-count // columns)
    canvas = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, channels), 255, np.uint8)
    for index, image in enumerate(images):
        top = pad + (index // columns) * (height + pad)
        left = pad + (index % columns) * (width + pad)
        canvas[top : top + height, left : left + width] = image
    return _gray_as_2d(canvas)


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement so small digits stay visible in viewers."""
    return image.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else image


def _gray_as_2d(image: np.ndarray) -> np.ndarray:
    """HxWx1 as HxW: image writers take gray images without a channel axis."""
    return image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image


def save_png(path: Path, image: np.ndarray) -> None:
    atomic_write(path, lambda handle: handle.write(iio.imwrite("<bytes>", _gray_as_2d(image), extension=".png")))


def save_gif(path: Path, frames: list[np.ndarray], fps: float) -> None:
    """An endlessly looping GIF; all frames must have the same size."""
    data = iio.imwrite(
        "<bytes>", np.stack([_gray_as_2d(frame) for frame in frames]), extension=".gif", duration=1000.0 / fps, loop=0
    )
    atomic_write(path, lambda handle: handle.write(data))


def architecture_diagram(model, path: Path) -> bool:
    """Draw ``model`` with Keras' ``plot_model``; False when Graphviz is not installed."""
    import keras

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        keras.utils.plot_model(model, to_file=str(path), show_shapes=True, show_layer_activations=True, dpi=72)
    except ImportError:
        return False
    return True


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation between latent vectors ``a`` and ``b`` at fractions ``t``.

    Gaussian latents concentrate near a sphere; walking along it (White, 2016, "Sampling
    generative networks") keeps every frame a typical latent, unlike a straight line.
    """
    cos = np.dot(a / np.linalg.norm(a), b / np.linalg.norm(b))
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    t = t[:, None]
    if np.isclose(np.sin(omega), 0.0):
        return (1 - t) * a + t * b
    return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


def latent_walk(points: np.ndarray, steps: int) -> np.ndarray:
    """Latents visiting each of ``points`` in turn and returning to the first (a loop)."""
    t = np.arange(steps) / steps
    legs = [slerp(points[i], points[(i + 1) % len(points)], t) for i in range(len(points))]
    return np.concatenate(legs).astype(np.float32)
