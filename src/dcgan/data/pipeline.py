"""tf.data input pipelines over prepared TFRecords: training batches and evaluation images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from dcgan.data.tfrecords import normalize, read_split

EPOCHS_UNBOUNDED = 1 << 31  # fit() stops by its own epoch count


def training_dataset(
    folder: Path, manifest: dict, batch_size: int, seed: int, shuffle_buffer: int, start_step: int
) -> tf.data.Dataset:
    """Normalised training batches, pass after pass over the data, from step ``start_step``.

    Each pass is over the cached images in an order that depends only on (seed, pass),
    not on how many passes this process already ran, so a run resumed at step k sees
    exactly the batches an uninterrupted run would. Batches are full (``drop_remainder``):
    static shapes and exactly ``count // batch_size`` steps per pass.
    """
    steps_per_pass = manifest["splits"]["train"]["count"] // batch_size
    images = read_split(folder, manifest, "train").map(lambda image, label: image).cache()
    seed = tf.constant(seed, tf.int64)

    def one_epoch(epoch):
        order_seed = seed * 1_000_003 + epoch
        return images.shuffle(shuffle_buffer, seed=order_seed, reshuffle_each_iteration=False).batch(
            batch_size, drop_remainder=True
        )

    return (
        tf.data.Dataset.range(start_step // steps_per_pass, EPOCHS_UNBOUNDED)
        .flat_map(one_epoch)
        .skip(start_step % steps_per_pass)
        .map(lambda batch: normalize(batch, manifest), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def load_images(folder: Path, manifest: dict, split: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` images of a split, normalised, with their labels, as arrays."""
    dataset = read_split(folder, manifest, split).take(limit).batch(1024)
    images, labels = [], []
    for image_batch, label_batch in dataset:
        images.append(normalize(image_batch, manifest).numpy())
        labels.append(label_batch.numpy())
    return np.concatenate(images), np.concatenate(labels)
