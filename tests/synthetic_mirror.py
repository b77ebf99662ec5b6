"""A small dataset mirror the tests make themselves, laid out like the real one
(docs/datasets.md): ``mnist/`` and ``fashion_mnist/`` as four gzip'd IDX files each, and
``flowers_ccby/images/<class>_<name>.jpg``. It lets the quick subset run where the real
mirror is not (``make test-quick`` on any machine): the images have class structure (a
bright stroke whose place depends on the label) but are not digits, so tests that assert
something only real data shows are marked ``real_data`` and skipped with it."""

from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from dcgan.data import sources

TRAIN, TEST = 1024, 512
FLOWER_CLASSES, FLOWERS_PER_CLASS = ("daisy", "dandelion", "roses", "sunflowers", "tulips"), 12


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 grey images: noise, and a bright bar in the row band of the label."""
    images = rng.integers(0, 40, (len(labels), 28, 28))
    for image, label in zip(images, labels):
        row = 2 + int(label) * 2 + int(rng.integers(0, 2))
        start = int(rng.integers(2, 10))
        image[row : row + 3, start : start + 16] = rng.integers(180, 256)
    return images


def _write_idx_dataset(folder: Path, spec: sources.IdxDataset, seed: int) -> sources.IdxDataset:
    """Write the four files of ``spec`` into ``folder``; the spec with their hashes and sizes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    written = {}
    for split, count in (("train", TRAIN), ("test", TEST)):
        labels = rng.permutation(np.arange(count) % 10)
        for kind, array in (("images", _images(labels, rng)), ("labels", labels)):
            raw = getattr(spec, f"{split}_{kind}")
            content = idx_bytes(array)
            (folder / raw.name).write_bytes(gzip.compress(content, compresslevel=1, mtime=0))
            written[f"{split}_{kind}"] = replace(raw, sha256=hashlib.sha256(content).hexdigest(), size=len(content))
    return replace(spec, **written)


def _write_flowers(folder: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for number, kind in enumerate(FLOWER_CLASSES):
        for index in range(FLOWERS_PER_CLASS):
            pixels = rng.integers(0, 256, (48, 40, 3)).astype(np.uint8)
            pixels[..., number % 3] = np.maximum(
                pixels[..., number % 3], 60 * (number // 3) + 140
            )  # each class its colour
            Image.fromarray(pixels).save(folder / f"{kind}_{index:03d}.jpg", quality=90)


def make_synthetic_mirror(root: Path) -> Path:
    """Write the mirror under ``root`` and point this process's dataset registry at its
    hashes (the real registry holds the official releases' hashes); ``root``."""
    for seed, (name, spec) in enumerate(sorted(sources.DATASETS.items())):
        sources.DATASETS[name] = _write_idx_dataset(root / spec.mirror_folder, spec, seed)
    _write_flowers(root / "flowers_ccby" / "images", seed=len(sources.DATASETS))
    return root
