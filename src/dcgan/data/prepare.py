"""Preparing data (the prepare stage, and training's "prepare if missing"): a source (IDX
files or an image folder) -> resized uint8 TFRecord shards."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import tensorflow as tf

from dcgan.config import Config, DataConfig, PathsConfig, data_identity
from dcgan.data import idx, image_folder, sources
from dcgan.data.tfrecords import FORMAT_VERSION, MANIFEST, load_manifest, write_prepared
from dcgan.errors import UserError
from dcgan.files import check_writable, locked

log = logging.getLogger(__name__)

RESIZE_CHUNK = 1024


def normalization(pixel_range: list[float]) -> dict:
    """Pixels are stored as uint8 (lossless for 8-bit sources, 4x smaller than float32) and
    mapped to the model's range on read as x * scale + offset."""
    low, high = pixel_range
    return {"range": [low, high], "scale": (high - low) / 255.0, "offset": low}


def _resized(images: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """Yield HxWx1 uint8 images, resized with antialiasing when ``size`` differs."""
    if images.shape[1:3] == (size, size):
        yield from images[..., np.newaxis]
        return
    for start in range(0, len(images), RESIZE_CHUNK):
        chunk = tf.convert_to_tensor(images[start : start + RESIZE_CHUNK, ..., np.newaxis], tf.float32)
        resized = tf.image.resize(chunk, (size, size), method="bilinear", antialias=True)
        yield from np.clip(np.rint(resized.numpy()), 0, 255).astype(np.uint8)


def _idx_splits(data: DataConfig, raw_dir: Path) -> tuple[dict, dict]:
    if data.channels != 1:
        raise UserError(
            f"config key data.channels: {data.source} images are greyscale (1 channel), got {data.channels}"
        )
    spec = sources.dataset(data.source)
    contents = sources.fetch(data.source, data.mirror_dir(), data.urls, raw_dir / data.source)
    arrays = {}
    for split, images, labels in (
        ("train", spec.train_images, spec.train_labels),
        ("test", spec.test_images, spec.test_labels),
    ):
        arrays[split] = idx.parse_pair(contents[images.name], contents[labels.name], images.name, labels.name)
    for split, limit in (("train", data.limit), ("test", data.test_limit)):
        arrays[split] = tuple(a[:limit] for a in arrays[split])
    splits = {split: (zip(_resized(x, data.image_size), y), len(y)) for split, (x, y) in arrays.items()}
    described = {
        "source_files": {raw.name: raw.sha256 for raw in spec.files()},
        "original_shape": list(arrays["train"][0].shape[1:]) + [1],
        "resize": None if arrays["train"][0].shape[1] == data.image_size else "bilinear, antialiased",
        "num_classes": int(max(y.max() for _, y in arrays.values())) + 1,
    }
    return splits, described


def _checked(examples: Iterable, skipped: list[dict], total: int, folder: Path, data: DataConfig) -> Iterator:
    """Pass examples through; once all are seen, fail if too many files were skipped."""
    yield from examples
    if skipped and (len(skipped) == total or len(skipped) > data.max_skipped_fraction * total):
        kind = f"all {total}" if len(skipped) == total else f"{len(skipped)} of {total}"
        raise UserError(
            f"{folder}: {kind} image files could not be used (first: {skipped[0]['file']}: {skipped[0]['reason']}); "
            f"data.max_skipped_fraction is {data.max_skipped_fraction}"
        )


def _image_folder_splits(data: DataConfig, raw_dir: Path) -> tuple[dict, dict]:
    folder, labels = sources.image_folder_source(data, raw_dir)
    files, classes = image_folder.list_images(folder, labels, data.label_pattern)
    by_split = {"train": [], "test": []}
    for file in files:
        by_split["test" if image_folder.in_test_split(file.relative, data.test_fraction) else "train"].append(file)
    if not by_split["train"] or not by_split["test"]:
        raise UserError(
            f"{folder}: {len(files)} image files are too few for both a train and a test split (data.test_fraction)"
        )
    for split, limit in (("train", data.limit), ("test", data.test_limit)):
        by_split[split] = by_split[split][:limit]
    skipped: list[dict] = []
    splits = {
        split: (image_folder.decode_parallel(chosen, data.image_size, data.channels, skipped), len(chosen))
        for split, chosen in by_split.items()
    }
    # Checked once the last split is decoded, so the count covers every file.
    test_images, test_count = splits["test"]
    decoded = sum(len(chosen) for chosen in by_split.values())
    splits["test"] = (_checked(test_images, skipped, decoded, folder, data), test_count)
    described = {
        "source_folder": str(folder),
        "source_files": len(files),
        "labels": labels,  # how classes were read: the config's, or the downloaded archive's layout
        "classes": classes,
        "num_classes": len(classes),
        "resize": "center crop to square, bicubic",
        "skipped": skipped,  # filled in while the splits are written
    }
    return splits, described


def prepare(data: DataConfig, paths: PathsConfig) -> dict:
    """Prepare ``data`` into ``paths.prepared_dir/<data.name>`` (raw downloads in ``paths.raw_dir``)."""
    prepared_dir = Path(paths.prepared_dir)
    check_writable(prepared_dir)
    with locked(prepared_dir / data.name):
        return _prepare(data, Path(paths.raw_dir), prepared_dir / data.name)


def prepare_stage(config: Config) -> dict:
    """The prepare stage (``python src/prepare.py``): ``prepare`` with the config's data and paths."""
    return prepare(config.data, config.paths)


def _prepare(data: DataConfig, raw_dir: Path, target: Path) -> dict:
    splits, described = (_image_folder_splits if data.source == "image_folder" else _idx_splits)(data, raw_dir)
    log.info(
        "preparing %s (%s) at %dx%dx%d into %s",
        data.name,
        data.source,
        data.image_size,
        data.image_size,
        data.channels,
        target,
    )
    manifest = {
        "dataset": data.name,
        "source": data.source,
        "limit": data.limit,
        "test_limit": data.test_limit,
        "image_shape": list(data.image_shape),
        "storage_dtype": "uint8",
        "normalization": normalization(data.pixel_range),
        "data_config": data_identity(data),
        **described,
    }
    manifest = write_prepared(target, splits, data.shards, manifest)
    for entry in manifest.get("skipped", []):
        log.warning("skipped %s: %s", entry["file"], entry["reason"])
    log.info("wrote %s", {split: info["count"] for split, info in manifest["splits"].items()})
    return manifest


def prepared_dataset(data: DataConfig, paths: PathsConfig) -> tuple[Path, dict]:
    """The prepared dataset for ``data``, preparing it first if it is missing or was
    made with other data settings or an older format (so ``python src/train.py data=...``
    and sweeps over datasets just work; under DVC the prepare stage has always run already).
    A current dataset whose files do not match its manifest is an error, not re-prepared."""
    folder = Path(paths.prepared_dir) / data.name
    try:
        found = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        log.info("%s not prepared yet; preparing it first", folder)
        return folder, prepare(data, paths)
    if (
        isinstance(found, dict)
        and found.get("format_version") == FORMAT_VERSION
        and found.get("data_config") == data_identity(data)
    ):
        return folder, load_manifest(folder)
    log.info("%s was prepared with other data settings or an older format; preparing it again", folder)
    return folder, prepare(data, paths)
