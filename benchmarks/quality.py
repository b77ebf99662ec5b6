"""Reference points for the quality metrics, in the product's feature space.

    python benchmarks/quality.py floor                 # real vs real, noise, one class
    python benchmarks/quality.py floor data=flowers128 # the same for another dataset
    python benchmarks/quality.py tutorial --epochs 9   # the TF tutorial loop as published
    python benchmarks/quality.py precision --epochs 3  # the default run in fp32 and bfloat16

``floor``: 10,000 random training images vs the 10,000 test images (what a perfect
generator would score; as many as the test split has, if fewer), uniform noise, and only
the training images of one class, class 3 (a mode-collapsed "generator"). ``tutorial``:
trains the TensorFlow DCGAN tutorial's loop as published (its networks, Adam(1e-4), fp32,
``from_tensor_slices(...).shuffle().batch()``) for the given number of epochs, printing FID
on 2,000 samples after every epoch and all metrics on 10,000 at the end (``--metrics``
writes them and the curve as JSON, ``--grid`` an 8x8 sample grid). ``precision``:
the product's default training for the given number of epochs, once in fp32 and once
with ``train.precision=auto``, same seed and data order, printing both runs' losses, D
outputs and FID (2,000 samples) after every epoch side by side: the fast path must train
the same model. All use the cached domain classifier in ``models/classifier/mnist``
(trained first if missing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from throughput import REPO, configure, history, tutorial_step

from dcgan import quality, viz
from dcgan.cli import composed, user_errors_in_one_line
from dcgan.commands.train import train
from dcgan.data.pipeline import load_images
from dcgan.data.prepare import prepared_dataset
from dcgan.data.tfrecords import to_uint8
from dcgan.files import check_writable, write_json

COUNT = 10000


def show(name: str, scores: dict) -> None:
    print(f"{name:<28} " + json.dumps({k: round(v, 4) for k, v in scores.items()}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["floor", "tutorial", "precision"])
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--grid", type=Path, help="save an 8x8 grid of the tutorial loop's samples here")
    parser.add_argument(
        "--metrics", type=Path, help="write the tutorial loop's scores and per-epoch curve here (JSON, as metrics.json)"
    )
    parser.add_argument("overrides", nargs="*", help="extra config overrides, e.g. data.limit=2048")
    args = parser.parse_intermixed_args()  # overrides may follow --epochs
    check_writable(*(path.parent for path in (args.metrics, args.grid) if path))  # before the training
    if args.what == "precision":
        compare_precisions(args.epochs, args.overrides)
        return
    config = configure(REPO, composed(["model=dcgan_mnist", *args.overrides]))  # the tutorial's own networks
    prepared, manifest = prepared_dataset(config.data, config.paths)
    space = quality.feature_space(config.metrics, config.paths.classifier_dir, prepared, manifest)
    print(f"domain classifier test accuracy: {space.accuracy:.4f}")
    scorer = quality.Scorer(space, config.metrics, prepared, manifest, COUNT)
    train_images, train_labels = load_images(prepared, manifest, "train", 60000)

    if args.what == "floor":
        count = scorer.count  # 10,000 on MNIST; a smaller test split is used whole
        low, high = manifest["normalization"]["range"]
        noise = np.random.default_rng(0).uniform(low, high, (count, *train_images.shape[1:])).astype(np.float32)
        # A random subset: image folders are stored class by class, so the last N are one class.
        subset = np.random.default_rng(1).choice(len(train_images), min(count, len(train_images)), replace=False)
        show("real train vs real test", scorer.score(train_images[np.sort(subset)]))
        show("uniform noise", scorer.score(noise))
        show(
            f"one class ({manifest.get('classes', range(10))[3]})",
            scorer.score(train_images[train_labels == 3][:count]),
        )
        return

    progress = quality.Scorer(space, config.metrics, prepared, manifest, 2000)  # as in training: 2,000 vs 2,000
    noise = np.random.default_rng(0).standard_normal((COUNT, config.model.latent_dim)).astype(np.float32)
    generator, curve = tutorial_curve(config, manifest, train_images, progress, noise[:2000], epochs=args.epochs)
    samples = quality.samples_of(generator, noise)
    scores = scorer.score(samples)
    show(f"tutorial loop, {args.epochs} epochs", scores)
    if args.metrics:
        per_epoch = [{"epoch": epoch, "training_seconds": round(sec, 1), "fid": fid} for epoch, sec, fid in curve]
        write_json(args.metrics, {**scores, "num_samples": COUNT, "history": per_epoch})
    if args.grid:
        viz.save_png(args.grid, viz.upscale(viz.grid(to_uint8(samples[:64], manifest), 8), 3))


def tutorial_curve(
    config,
    manifest: dict,
    train_images: np.ndarray,
    progress: quality.Scorer,
    noise: np.ndarray,
    epochs: int | None = None,
    budget_seconds: float | None = None,
):
    """Train the TF tutorial's loop as published (batch 256) for ``epochs``, or until
    ``budget_seconds`` of training (scoring not counted) have passed, stopping mid-epoch if
    need be; FID on ``noise``'s samples after every epoch and at the end. Returns the
    generator and the (epoch, training seconds, FID) rows."""
    generator, train_step = tutorial_step(config, tuple(manifest["image_shape"]), 256)
    dataset = tf.data.Dataset.from_tensor_slices(train_images).shuffle(len(train_images)).batch(256)
    rows, trained, epoch = [], 0.0, 0
    while (epochs is None or epoch < epochs) and (budget_seconds is None or trained < budget_seconds):
        epoch += 1
        started = time.perf_counter()
        for images in dataset:
            train_step(images)
            if budget_seconds is not None and trained + time.perf_counter() - started >= budget_seconds:
                break
        generator.trainable_variables[0].numpy()  # wait for the last step
        trained += time.perf_counter() - started
        rows.append((epoch, trained, progress.score(quality.samples_of(generator, noise))["fid"]))
        print(
            f"tutorial loop epoch {epoch}: {trained:.0f} s of training, FID ({len(noise):,} samples) {rows[-1][2]:.2f}",
            flush=True,
        )
    return generator, rows


def compare_precisions(epochs: int, overrides: list[str]) -> None:
    """The default training in fp32 and with precision=auto, per-epoch figures side by side."""
    columns = ("d_loss", "g_loss", "d_real", "d_fake", "fid", "recall")
    histories = {}
    setups = {
        precision: composed(
            [f"train.epochs={epochs}", f"train.precision={precision}", "train.resume=never", *overrides]
        )
        for precision in ("fp32", "auto")
    }
    workdir = Path(tempfile.mkdtemp(prefix="dcgan-precision-"))
    for precision, setup in setups.items():
        config = configure(workdir, setup)
        config.paths.models_dir, config.paths.reports_dir = (
            str(workdir / f"models-{precision}"),
            str(workdir / f"reports-{precision}"),
        )
        train(config)
        histories[precision] = history(Path(config.paths.reports_dir) / "train_history.csv")
    print(f"\n{'epoch':>5}  " + "  ".join(f"{c + ' ' + p:>14}" for c in columns for p in ("fp32", "auto")))
    for fp32, auto in zip(histories["fp32"], histories["auto"]):
        print(
            f"{int(fp32['epoch']):>5}  "
            + "  ".join(f"{row.get(c, float('nan')):>14.4f}" for c in columns for row in (fp32, auto))
        )
    speed = {p: statistics.median(row["images_per_sec"] for row in rows) for p, rows in histories.items()}
    print(f"median images/s: fp32 {speed['fp32']:.1f}, auto {speed['auto']:.1f} ({speed['auto'] / speed['fp32']:.2f}x)")


if __name__ == "__main__":
    with user_errors_in_one_line():
        main()
