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
import struct
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from dcgan.errors import UserError

MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # 2: per-shard sizes and the records' content_sha256
REQUIRED_KEYS = ("splits", "image_shape", "normalization", "content_sha256")
RERUN_PREPARE = "rerun prepare (dvc repro prepare, or python src/prepare.py)"
_verified: set[tuple[str, str]] = set()  # (folder, manifest hash) checked by this process


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


def _write_split(
    folder: Path, split: str, examples: Iterable[tuple[np.ndarray, int]], expected: int, shards: int, content
) -> dict:
    """Write (HxWxC uint8 image, label) pairs round-robin into ``shards`` files (balanced sizes),
    feeding each record to the ``content`` hash in order. Reading the shards interleaved
    gives the records back in that order, however many shards there are."""
    shards = max(1, min(shards, expected))
    names = [f"{split}-{i:05d}-of-{shards:05d}.tfrecord" for i in range(shards)]
    writers = [tf.io.TFRecordWriter(str(folder / name)) for name in names]
    per_shard = [0] * shards
    count = 0
    try:
        for image, label in tqdm(examples, total=expected, desc=f"writing {split}", unit="img", disable=None):
            record = _example(image, label)
            content.update(record)
            writers[count % shards].write(record)
            per_shard[count % shards] += 1
            count += 1
    finally:
        for writer in writers:
            writer.close()
    return {
        "count": count,
        "shards": [
            {"file": name, "count": n, "bytes": (folder / name).stat().st_size, "sha256": _file_sha256(folder / name)}
            for name, n in zip(names, per_shard)
        ],
    }


def write_prepared(
    target: Path, splits: dict[str, tuple[Iterable[tuple[np.ndarray, int]], int]], shards: int, manifest: dict
) -> dict:
    """Atomically (re)create ``target`` with one set of shards per split and the manifest.

    ``splits`` maps a split name to (an iterable of (image, label) pairs, how many to
    expect); the iterable may raise to abandon the whole dataset. The iterables are
    consumed before ``manifest`` is written, so it may hold what they found out. The
    manifest's ``content_sha256`` covers every record in order and not how they are
    sharded: it is what a training run was trained on.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):  # left by a killed prepare; callers hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is for everyone who can read the project
    try:
        content = hashlib.sha256()
        written = {
            split: _write_split(tmp, split, examples, expected, shards, content)
            for split, (examples, expected) in splits.items()
        }
        manifest = dict(manifest, format_version=FORMAT_VERSION, splits=written, content_sha256=content.hexdigest())
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
    """Read a prepared dataset's manifest and check the shards against it (once per process)."""
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(f"{path}: prepared dataset not found; run the prepare stage first (dvc repro prepare)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); {RERUN_PREPARE}") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise UserError(f"{path}: format version {version} is not {FORMAT_VERSION}; {RERUN_PREPARE}")
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise UserError(f"{path}: no {', '.join(missing)}; {RERUN_PREPARE}")
    key = (str(folder.resolve()), manifest_sha256(folder))
    if key not in _verified:
        _verify_shards(folder, manifest)
        _verified.add(key)
    return manifest


def _count_records(path: Path) -> int:
    """The records in a TFRecord file, from its framing alone (each is a little-endian
    uint64 length, a CRC, the data, a CRC)."""
    count, position, size = 0, 0, path.stat().st_size
    with open(path, "rb") as handle:
        while position + 8 <= size:
            handle.seek(position)
            position += 16 + struct.unpack("<Q", handle.read(8))[0]
            count += 1
    return count


def _verify_shards(folder: Path, manifest: dict) -> None:
    """Every shard present with its recorded size, SHA-256 and record count, the counts
    adding up, and records of the manifest's image shape: a truncated or edited dataset or
    manifest fails here, before any work."""
    try:
        splits = {
            name: (
                split["count"],
                [(shard["file"], shard["bytes"], shard["sha256"], shard["count"]) for shard in split["shards"]],
            )
            for name, split in manifest["splits"].items()
        }
    except (KeyError, TypeError, AttributeError) as exc:
        raise UserError(
            f"{folder / MANIFEST}: splits are malformed ({type(exc).__name__}: {exc}); {RERUN_PREPARE}"
        ) from None
    for name, (count, shards) in splits.items():
        for file, size, sha256, records in shards:
            path = folder / file
            if not path.is_file():
                raise UserError(f"{path}: shard listed in {MANIFEST} is missing; {RERUN_PREPARE}")
            if path.stat().st_size != size or _file_sha256(path) != sha256:
                raise UserError(
                    f"{path}: shard does not match the SHA-256 in {MANIFEST} (truncated or changed); {RERUN_PREPARE}"
                )
            held = _count_records(path)
            if held != records:
                raise UserError(
                    f"{folder / MANIFEST}: lists {records} records for {file}, which holds {held}; {RERUN_PREPARE}"
                )
        total = sum(records for *_, records in shards)
        if count != total:
            raise UserError(
                f"{folder / MANIFEST}: splits.{name}.count is {count}, but its shards hold {total} records; "
                f"{RERUN_PREPARE}"
            )
    first = folder / manifest["splits"]["train"]["shards"][0]["file"]
    for record in tf.data.TFRecordDataset(str(first)).take(1):
        image = tf.io.parse_single_example(record, {"image": tf.io.FixedLenFeature([], tf.string)})["image"]
        size, expected = len(image.numpy()), int(np.prod(manifest["image_shape"]))
        if size != expected:
            raise UserError(
                f"{folder / MANIFEST}: image_shape {manifest['image_shape']} ({expected} bytes) does not match "
                f"the {size}-byte images in {first.name}; {RERUN_PREPARE}"
            )


def manifest_sha256(folder: Path) -> str:
    return _file_sha256(folder / MANIFEST)


def split_sha256(manifest: dict, split: str) -> str:
    """One digest for a split, from its shards' SHA-256s in order: equal for the same images."""
    return hashlib.sha256(
        "".join(shard["sha256"] for shard in manifest["splits"][split]["shards"]).encode()
    ).hexdigest()


def shards_of(manifest: dict, split: str, part: tuple[int, int] = (0, 1)) -> list[dict]:
    """The shards of a split in part ``(index, parts)``: every ``parts``-th from ``index``."""
    index, parts = part
    return manifest["splits"][split]["shards"][index::parts]


def read_split(folder: Path, manifest: dict, split: str, part: tuple[int, int] = (0, 1)) -> tf.data.Dataset:
    """(image uint8 HxWxC, label int64) pairs of one split (or of its ``part``, by shard
    file: ``shards_of``), in a fixed order."""
    if split not in manifest["splits"]:
        raise UserError(f"{folder / MANIFEST}: no {split!r} split")
    files = [str(folder / shard["file"]) for shard in shards_of(manifest, split, part)]
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
