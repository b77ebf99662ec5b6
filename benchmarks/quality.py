"""Reference points for the quality metrics on MNIST, in the product's feature space.

    python benchmarks/quality.py floor                 # real vs real, noise, one class
    python benchmarks/quality.py tutorial --epochs 9   # the TF tutorial loop as published

``floor``: the last 10,000 training images vs the 10,000 test images (what a perfect
generator would score), uniform noise, and only the training images of one class (a
mode-collapsed "generator"). ``tutorial``: trains the TensorFlow DCGAN tutorial's loop as
published (its networks, Adam(1e-4), fp32, ``from_tensor_slices(...).shuffle().batch()``)
for the given number of epochs (9 epochs took ~26 min alone here, the default run's budget), printing
FID on 2,000 samples after every epoch and all metrics on 10,000 at the end. Both use the
cached domain classifier in ``models/classifier/mnist`` (trained first if missing).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from dcgan import quality, viz
from dcgan.data.pipeline import load_images
from dcgan.data.tfrecords import to_uint8
from dcgan.stages.prepare import prepared_dataset
from throughput import REPO, configure, tutorial_step

COUNT = 10000


def show(name: str, scores: dict) -> None:
    print(f"{name:<28} " + json.dumps({k: round(v, 4) for k, v in scores.items()}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["floor", "tutorial"])
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--grid", type=Path, help="save an 8x8 grid of the tutorial loop's samples here")
    args = parser.parse_args()
    config = configure(REPO, [])
    prepared, manifest = prepared_dataset(config)
    space = quality.feature_space(config, prepared, manifest)
    print(f"domain classifier test accuracy: {space.accuracy:.4f}")
    scorer = quality.Scorer(space, config, prepared, manifest, COUNT)
    train_images, train_labels = load_images(prepared, manifest, "train", 60000)

    if args.what == "floor":
        show("real train vs real test", scorer.score(train_images[-COUNT:]))
        show("uniform noise", scorer.score(np.random.default_rng(0).uniform(-1, 1, (COUNT, 28, 28, 1)).astype(np.float32)))
        show("one class (digit 3)", scorer.score(train_images[train_labels == 3][:COUNT]))
        return

    progress = quality.Scorer(space, config, prepared, manifest, 2000)  # as in training: 2,000 vs 2,000
    generator, train_step = tutorial_step(config, tuple(manifest["image_shape"]), 256)
    dataset = tf.data.Dataset.from_tensor_slices(train_images).shuffle(60000).batch(256)
    noise = np.random.default_rng(0).standard_normal((COUNT, config.model.latent_dim)).astype(np.float32)
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        for images in dataset:
            train_step(images)
        fid = progress.score(quality.generate(generator, noise[:2000]))["fid"]
        print(f"epoch {epoch}: {time.perf_counter() - started:.0f} s, FID (2,000 samples) {fid:.2f}", flush=True)
    samples = quality.generate(generator, noise)
    show(f"tutorial loop, {args.epochs} epochs", scorer.score(samples))
    if args.grid:
        viz.save_png(args.grid, viz.upscale(viz.grid(to_uint8(samples[:64], manifest), 8), 3))


if __name__ == "__main__":
    main()
