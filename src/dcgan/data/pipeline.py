"""tf.data input pipelines over prepared TFRecords: training batches and evaluation images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from dcgan.data.tfrecords import MANIFEST, normalize, read_split, shards_of
from dcgan.errors import UserError

EPOCHS_UNBOUNDED = 1 << 31  # fit() stops by its own epoch count


def check_shards_per_replica(folder: Path, shards: int, replicas: int) -> None:
    if shards < replicas:
        raise UserError(
            f"{folder / MANIFEST}: {shards} training shards cannot be split between {replicas} replicas (each "
            f"reads its own files); prepare with data.shards={replicas} or more"
        )


def training_dataset(
    folder: Path,
    manifest: dict,
    batch_size: int,
    seed: int,
    shuffle_buffer: int,
    start_step: int,
    strategy: tf.distribute.Strategy | None = None,
) -> tf.data.Dataset | tf.distribute.DistributedDataset:
    """Normalised training batches, pass after pass over the data, from step ``start_step``.

    Each pass is over the cached images in an order that depends only on (seed, pass),
    not on how many passes this process already ran, so a run resumed at step k sees
    exactly the batches an uninterrupted run would. Batches are full (``drop_remainder``):
    static shapes and exactly ``count // batch_size`` steps per pass.

    With a ``strategy`` of R replicas, ``batch_size`` is the global batch: replica r reads
    its own shard files (r, r + R, ...) in batches of ``batch_size / R``, so a replica's data
    is the same whether its process trains one replica or several, and each worker of a
    multi-worker run reads only its own files.
    """

    def batches(size: int, part: tuple[int, int]) -> tf.data.Dataset:
        steps_per_pass = sum(shard["count"] for shard in shards_of(manifest, "train", part)) // size
        images = read_split(folder, manifest, "train", part).map(lambda image, label: image).cache()
        seed_tensor = tf.constant(seed, tf.int64)

        def one_epoch(epoch):
            order_seed = seed_tensor * 1_000_003 + epoch
            return images.shuffle(shuffle_buffer, seed=order_seed, reshuffle_each_iteration=False).batch(
                size, drop_remainder=True
            )

        return (
            tf.data.Dataset.range(start_step // steps_per_pass, EPOCHS_UNBOUNDED)
            .flat_map(one_epoch)
            .skip(start_step % steps_per_pass)
            .map(lambda batch: normalize(batch, manifest), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE)
        )

    replicas = strategy.num_replicas_in_sync if strategy else 1
    if replicas == 1:
        return batches(batch_size, (0, 1))
    check_shards_per_replica(folder, len(shards_of(manifest, "train")), replicas)
    if batch_size % replicas:
        raise UserError(f"config key train.batch_size: {batch_size} does not split evenly between {replicas} replicas")

    def this_workers_batches(context: tf.distribute.InputContext) -> tf.data.Dataset:
        local = replicas // context.num_input_pipelines
        first = context.input_pipeline_id * local
        streams = [batches(batch_size // replicas, (replica, replicas)) for replica in range(first, first + local)]
        # The strategy hands a worker's batches to its replicas in turn.
        return tf.data.Dataset.choose_from_datasets(streams, tf.data.Dataset.range(local).repeat())

    return strategy.distribute_datasets_from_function(this_workers_batches)


def load_images(folder: Path, manifest: dict, split: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` images of a split, normalised, with their labels, as arrays."""
    dataset = read_split(folder, manifest, split).take(limit).batch(1024)
    images, labels = [], []
    for image_batch, label_batch in dataset:
        images.append(normalize(image_batch, manifest).numpy())
        labels.append(label_batch.numpy())
    return np.concatenate(images), np.concatenate(labels)
