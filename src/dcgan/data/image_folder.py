"""Image folders (any tree of JPEG/PNG files, e.g. CelebA's img_align_celeba/) as a source.

Files are decoded, center-cropped to a square and resized in a pool of worker threads,
streamed in a fixed order, so memory stays flat however large the folder is. A file
that cannot be read, or is smaller than the target size, is skipped and reported.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from dcgan.errors import UserError

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
CHUNK = 16  # files per task sent to a worker


@dataclass(frozen=True)
class ImageFile:
    path: Path
    relative: str  # path inside the folder, used for labels, splits and reports
    label: int


def list_images(folder: Path, labels: str, label_pattern: str) -> tuple[list[ImageFile], list[str]]:
    """All image files under ``folder`` (recursive, sorted) and the class names.

    ``labels``: ``none``; ``subfolder`` (the first folder level is the class, the Keras
    ``image_dataset_from_directory`` convention); or ``prefix`` (the first group of
    ``label_pattern`` matched against the file name).
    """
    if not folder.is_dir():
        raise UserError(f"{folder}: image folder not found (config key data.path)")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
    if not paths:
        raise UserError(f"{folder}: no image files ({', '.join(sorted(EXTENSIONS))}) in the folder or below")
    relatives = [p.relative_to(folder).as_posix() for p in paths]
    if labels == "none":
        names = [""] * len(paths)
    elif labels == "subfolder":
        names = [r.split("/")[0] if "/" in r else "" for r in relatives]
        if "" in names:
            raise UserError(f"{folder / relatives[names.index('')]}: not in a class sub-folder (data.labels=subfolder)")
    else:
        pattern = re.compile(label_pattern)
        names = []
        for path, relative in zip(paths, relatives):
            match = pattern.match(path.name)
            if not match:
                raise UserError(f"{folder / relative}: file name does not match data.label_pattern {label_pattern!r}")
            names.append(match.group(1))
    classes = sorted(set(names))
    index = {name: i for i, name in enumerate(classes)}
    files = [ImageFile(p, r, index[n]) for p, r, n in zip(paths, relatives, names)]
    return files, classes if labels != "none" else []


def in_test_split(relative: str, test_fraction: float) -> bool:
    """A stable split: depends only on the file's path, not on what else is in the folder."""
    digest = int.from_bytes(hashlib.sha256(relative.encode()).digest()[:8], "big")
    return digest / 2**64 < test_fraction


def load_square(path: Path, size: int, channels: int) -> tuple[Optional[np.ndarray], str]:
    """Decode, convert (grey/RGBA/CMYK/palette -> RGB or L), center-crop, resize to size x size.

    Returns (HxWxC uint8 image, "") or (None, reason) for a file that is skipped.
    """
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so a truncated file fails here
            width, height = image.size
            if min(width, height) < size:
                return None, f"too small ({width}x{height} < {size}x{size})"
            if image.mode in ("RGBA", "LA", "P"):
                # Transparent pixels: composite on white instead of exposing undefined colours.
                rgba = image.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, rgba)
            image = image.convert("RGB" if channels == 3 else "L")
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            image = image.crop((left, top, left + side, top + side))
            image = image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
            array = np.asarray(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        return None, f"unreadable ({type(exc).__name__}: {str(exc)[:120]})"
    return (array[..., np.newaxis] if channels == 1 else array), ""


def decode_parallel(
    files: list[ImageFile], size: int, channels: int, failures: list[dict], workers: Optional[int] = None
) -> Iterator[tuple[np.ndarray, int]]:
    """Yield (image, label) for each readable file, in file order; record the others in ``failures``."""
    workers = workers or os.cpu_count() or 1
    # Threads, not processes: PIL releases the GIL while it decodes and resizes, and forking a
    # process whose TensorFlow threads run (a sweep's later jobs train in it) can deadlock a child.
    with ThreadPool(workers) as pool:
        results = pool.imap(lambda file: load_square(file.path, size, channels), files, chunksize=CHUNK)
        for file, (image, reason) in zip(files, results):
            if image is None:
                failures.append({"file": file.relative, "reason": reason})
            else:
                yield image, file.label
