"""The prepare stage: raw source files -> verified arrays -> resized uint8 TFRecord shards."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import numpy as np
import tensorflow as tf

from dcgan.config import Config
from dcgan.data import idx, sources
from dcgan.data.tfrecords import write_prepared

log = logging.getLogger(__name__)

RESIZE_CHUNK = 1024
# Pixels are stored as uint8 (lossless for 8-bit sources, 4x smaller than float32) and
# mapped to the model's range on read: x * scale + offset takes 0..255 to [-1, 1].
NORMALIZATION = {"range": [-1.0, 1.0], "scale": 1.0 / 127.5, "offset": -1.0}


def _resized(images: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """Yield HxWx1 uint8 images, resized with antialiasing when ``size`` differs."""
    if images.shape[1:3] == (size, size):
        yield from images[..., np.newaxis]
        return
    for start in range(0, len(images), RESIZE_CHUNK):
        chunk = tf.convert_to_tensor(images[start : start + RESIZE_CHUNK, ..., np.newaxis], tf.float32)
        resized = tf.image.resize(chunk, (size, size), method="bilinear", antialias=True)
        yield from np.clip(np.rint(resized.numpy()), 0, 255).astype(np.uint8)


def prepare(config: Config) -> dict:
    data = config.data
    spec = sources.dataset(data.source)
    contents = sources.fetch(data.source, data.mirror_dir(), data.urls, Path(config.paths.raw_dir) / data.source)
    train_x, train_y = idx.parse_pair(
        contents[spec.train_images.name], contents[spec.train_labels.name], spec.train_images.name, spec.train_labels.name
    )
    test_x, test_y = idx.parse_pair(
        contents[spec.test_images.name], contents[spec.test_labels.name], spec.test_images.name, spec.test_labels.name
    )
    if data.limit is not None:
        train_x, train_y = train_x[: data.limit], train_y[: data.limit]
    size = data.image_size
    manifest = {
        "dataset": data.name,
        "source": data.source,
        "source_files": {raw.name: raw.sha256 for raw in spec.files()},
        "limit": data.limit,
        "original_shape": list(train_x.shape[1:]) + [1],
        "image_shape": [size, size, 1],
        "storage_dtype": "uint8",
        "resize": None if size == train_x.shape[1] else "bilinear, antialiased",
        "normalization": NORMALIZATION,
        "num_classes": int(max(train_y.max(), test_y.max())) + 1,
    }
    target = Path(config.paths.prepared_dir) / data.name
    log.info("preparing %s: %d train + %d test images at %dx%d into %s", data.name, len(train_x), len(test_x), size, size, target)
    return write_prepared(
        target,
        {"train": (_resized(train_x, size), train_y), "test": (_resized(test_x, size), test_y)},
        data.shards,
        manifest,
    )
