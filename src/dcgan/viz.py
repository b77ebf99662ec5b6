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


Curve = tuple[list[float], list[float]]  # x values (training minutes or epochs) and FIDs


def plot_fid_curves(axes, curves: dict[str, Curve], xlabel: str) -> None:
    """Runs' in-training FID against ``xlabel`` on one log-scaled axes, a line per run."""
    for label, (x, fid) in curves.items():
        axes.plot(x, fid, marker="o", label=label)
    axes.set_yscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("FID, in-training sample")
    axes.grid(True, axis="x", alpha=0.3)
    axes.legend(fontsize=8)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


TRAINING_MINUTES = "training minutes (epoch-end scoring excluded)"


def fid_curves_figure(path: Path, title: str, curves: dict[str, Curve], xlabel: str = TRAINING_MINUTES) -> None:
    """Runs' FID curves in one PNG (the FID-per-minute figures in docs/)."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7.5, 4.2), dpi=100)
    plot_fid_curves(axes, curves, xlabel)
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    atomic_write(path, lambda handle: figure.savefig(handle, format="png"))
    plt.close(figure)


def comparison_figure(path: Path, title: str, curves: dict[str, Curve], grids: dict[str, np.ndarray]) -> None:
    """One PNG comparing runs (MLflow shows one run's images at a time): their FID against
    training minutes above, each run's last sample grid below, titled with its label."""
    plt = _pyplot()
    columns = min(len(grids), 4) or 1
    rows = -(-len(grids) // columns)
    figure = plt.figure(figsize=(2.6 * max(columns, 3), 3.6 + 2.9 * rows), dpi=100)
    layout = figure.add_gridspec(1 + rows, columns, height_ratios=[3.6] + [2.9] * rows)
    plot_fid_curves(figure.add_subplot(layout[0, :]), curves, TRAINING_MINUTES)
    for index, (label, image) in enumerate(grids.items()):
        axes = figure.add_subplot(layout[1 + index // columns, index % columns])
        axes.imshow(image, cmap="gray" if image.ndim == 2 else None)
        axes.set_title(label, fontsize=8, wrap=True)
        axes.axis("off")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    atomic_write(path, lambda handle: figure.savefig(handle, format="png"))
    plt.close(figure)


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
