"""Prepared datasets on disk: sharded TFRecords plus a ``manifest.json`` describing them.

A prepared dataset is a folder that either holds a complete, verified set of shards and
its manifest, or does not exist: it is written under a temporary name and renamed into
place only once everything (manifest last) is on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from dcgan.errors import UserError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def _example(image: np.ndarray, label: int) -> bytes:
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
    }
    # Deterministic: map entries in key order, so the same images give the same shard bytes
    # (and manifest hashes) in every process; the default order varied from process to process.
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_split(folder: Path, split: str, examples: Iterable[tuple[np.ndarray, int]], expected: int, shards: int) -> dict:
    """Write (HxWxC uint8 image, label) pairs round-robin into ``shards`` files (balanced sizes)."""
    shards = max(1, min(shards, expected))
    names = [f"{split}-{i:05d}-of-{shards:05d}.tfrecord" for i in range(shards)]
    writers = [tf.io.TFRecordWriter(str(folder / name)) for name in names]
    per_shard = [0] * shards
    count = 0
    try:
        for image, label in tqdm(examples, total=expected, desc=f"writing {split}", unit="img"):
            writers[count % shards].write(_example(image, label))
            per_shard[count % shards] += 1
            count += 1
    finally:
        for writer in writers:
            writer.close()
    return {
        "count": count,
        "shards": [
            {"file": name, "count": n, "sha256": _file_sha256(folder / name)} for name, n in zip(names, per_shard)
        ],
    }


def write_prepared(target: Path, splits: dict[str, tuple[Iterable[tuple[np.ndarray, int]], int]], shards: int, manifest: dict) -> dict:
    """Atomically (re)create ``target`` with one set of shards per split and the manifest.

    ``splits`` maps a split name to (an iterable of (image, label) pairs, how many to
    expect); the iterable may raise to abandon the whole dataset. The iterables are
    consumed before ``manifest`` is written, so it may hold what they found out.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is for everyone who can read the project
    try:
        written = {split: _write_split(tmp, split, examples, expected, shards) for split, (examples, expected) in splits.items()}
        manifest = dict(manifest, format_version=FORMAT_VERSION, splits=written)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, tf.errors.OpError):  # TFRecordWriter's form of an OSError (e.g. disk full)
            raise UserError(f"{target}: cannot write the prepared dataset: {exc.message}") from None
        raise
    return manifest


def load_manifest(folder: Path) -> dict:
    """Read and sanity-check a prepared dataset's manifest; every shard must be present."""
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(f"{path}: prepared dataset not found; run the prepare stage first (dvc repro prepare)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: format version {manifest.get('format_version')} is not {FORMAT_VERSION}; rerun prepare")
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            if not (folder / shard["file"]).is_file():
                raise UserError(f"{folder / shard['file']}: shard listed in {MANIFEST} is missing; rerun prepare")
    return manifest


def manifest_sha256(folder: Path) -> str:
    return _file_sha256(folder / MANIFEST)


def read_split(folder: Path, manifest: dict, split: str) -> tf.data.Dataset:
    """(image uint8 HxWxC, label int64) pairs of one split, in a fixed order."""
    if split not in manifest["splits"]:
        raise UserError(f"{folder / MANIFEST}: no {split!r} split")
    files = [str(folder / shard["file"]) for shard in manifest["splits"][split]["shards"]]
    shape = manifest["image_shape"]
    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
    }

    def parse(record):
        example = tf.io.parse_single_example(record, spec)
        image = tf.reshape(tf.io.decode_raw(example["image"], tf.uint8), shape)
        return image, example["label"]

    # Deterministic interleave keeps the record order fixed, which seeded shuffling needs.
    records = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=len(files), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    return records.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def normalize(images: tf.Tensor, manifest: dict) -> tf.Tensor:
    """uint8 pixels -> the float range the manifest declares (e.g. [-1, 1])."""
    norm = manifest["normalization"]
    return tf.cast(images, tf.float32) * norm["scale"] + norm["offset"]


def to_uint8(images: np.ndarray, manifest: dict) -> np.ndarray:
    """Inverse of ``normalize``, for saving generated images."""
    norm = manifest["normalization"]
    return np.clip(np.rint((np.asarray(images, np.float32) - norm["offset"]) / norm["scale"]), 0, 255).astype(np.uint8)
