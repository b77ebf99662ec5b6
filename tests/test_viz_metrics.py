"""Grids, GIFs, latent walks and the evaluation diagnostics."""

import shutil

import imageio.v3 as iio
import numpy as np
import pytest
from conftest import needs_package

from dcgan import metrics, viz


def test_grid_places_images_in_rows():
    images = np.stack([np.full((2, 3, 1), i * 10, np.uint8) for i in range(5)])
    canvas = viz.grid(images, columns=2, pad=1)
    assert canvas.shape == (3 * 3 + 1, 2 * 4 + 1)  # 3 rows of 2, 1px borders
    assert canvas[1, 1] == 0 and canvas[1, 5] == 10 and canvas[4, 1] == 20 and canvas[7, 1] == 40
    assert canvas[7, 5] == 255  # the unused sixth cell stays background


def test_rgb_grid_keeps_channels():
    assert viz.grid(np.zeros((4, 5, 5, 3), np.uint8), 2).shape[-1] == 3


def test_comparison_figure_shows_every_runs_grid_below_the_curves(tmp_path):
    colours = {"optimizer=adam": (200, 30, 30), "optimizer=rmsprop": (30, 200, 30), "lr=0.1": (30, 30, 200)}
    grids = {label: np.full((20, 20, 3), colour, np.uint8) for label, colour in colours.items()}
    curves = {label: ([0.5, 1.0, 1.5], [90.0, 40.0, 25.0]) for label in colours}
    viz.comparison_figure(tmp_path / "c.png", "3 jobs", curves, grids)
    figure = iio.imread(tmp_path / "c.png")[..., :3]
    assert figure.shape[:2] == (650, 780)  # 3 grids in a row of 3 columns under the curves
    below_curves = figure[360:].reshape(-1, 3)
    for colour in colours.values():  # each grid drawn (imshow keeps solid colours exact)
        assert (below_curves == colour).all(axis=1).sum() > 1000, colour


def test_distinguishing_labels_drop_what_every_job_shares():
    from dcgan.sweeps import distinguishing_labels

    jobs = {"a": "debug=tiny optimizer=adam", "b": "debug=tiny optimizer=rmsprop", "c": ""}
    assert distinguishing_labels(jobs) == {**jobs, "c": "c"}  # nothing shared by all three
    trials = {  # a search's: floats shortened, keys to their last two parts, its bookkeeping left out
        "a": "optimizer.generator.learning_rate=0.00035578497 train.seed=1 search.trial=0",
        "b": "optimizer.generator.learning_rate=0.0001 train.seed=1 search.trial=1",
    }
    assert distinguishing_labels(trials) == {
        "a": "generator.learning_rate=0.000356",
        "b": "generator.learning_rate=0.0001",
    }
    assert distinguishing_labels({"a": "debug=tiny optimizer=adam", "b": "debug=tiny optimizer=rmsprop"}) == {
        "a": "optimizer=adam",
        "b": "optimizer=rmsprop",
    }


def test_architecture_diagrams_are_drawn_by_graphviz(tmp_path):
    import keras

    needs_package(
        "graphviz", shutil.which("dot") is not None, "Keras' plot_model draws the architecture diagrams with it"
    )
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="dense")], name="small")
    assert viz.architecture_diagram(model, tmp_path / "small.png")
    assert iio.imread(tmp_path / "small.png").ndim == 3


def test_gif_round_trip(tmp_path):
    frames = [np.full((6, 6), v, np.uint8) for v in (0, 128, 255)]
    viz.save_gif(tmp_path / "a.gif", frames, fps=10)
    read = iio.imread(tmp_path / "a.gif", index=None)
    first_pixels = read.reshape(3, 6, 6, -1)[:, 0, 0, 0]  # grey or RGB(A), depending on the plugin
    assert np.allclose(first_pixels, [0, 128, 255], atol=2)


def test_slerp_endpoints_and_norm():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(100), rng.standard_normal(100)
    path = viz.slerp(a, b, np.linspace(0, 1, 5))
    assert np.allclose(path[0], a) and np.allclose(path[-1], b)
    # Stays near the shell where Gaussian latents live, unlike the linear midpoint.
    assert np.linalg.norm(path[2]) > np.linalg.norm((a + b) / 2) * 1.2


def test_latent_walk_loops_back():
    points = np.random.default_rng(1).standard_normal((3, 8))
    walk = viz.latent_walk(points, steps=4)
    assert walk.shape == (12, 8) and np.allclose(walk[0], points[0]) and np.allclose(walk[4], points[1])


def test_discriminator_scores():
    scores = metrics.discriminator_scores(np.array([10.0, 10.0, -10.0]), np.array([-10.0, -10.0, 10.0]))
    assert scores["d_accuracy"] == pytest.approx(4 / 6)
    assert scores["d_real"] == pytest.approx(2 / 3, abs=1e-4)
    assert scores["d_fake"] == pytest.approx(1 / 3, abs=1e-4)


def test_diversity_ratio_detects_collapse():
    rng = np.random.default_rng(0)
    real = rng.uniform(-1, 1, (200, 28, 28, 1))
    assert metrics.diversity_ratio(real, rng.uniform(-1, 1, (200, 28, 28, 1))) == pytest.approx(1.0, abs=0.02)
    collapsed = np.repeat(real[:1], 200, axis=0) + rng.normal(0, 0.01, (200, 28, 28, 1))
    assert metrics.diversity_ratio(real, collapsed) < 0.05
