"""Where raw dataset files come from: a local mirror folder, or a verified download.

Integrity is checked on the *decompressed* bytes: the same IDX files are distributed with
different gzip encodings (the official ``.gz``, Debian's, our mirror's), but their content
is fixed, so the SHA-256 of that content is what identifies a genuine file.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from dcgan.config import MIRROR_ENV
from dcgan.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawFile:
    name: str  # file name, identical in the official release and the mirror layout
    sha256: str  # of the decompressed content
    size: int  # decompressed bytes


@dataclass(frozen=True)
class IdxDataset:
    """A dataset published as the four gzip'd IDX files of the MNIST release."""

    mirror_folder: str  # sub-folder of a mirror, e.g. ``mnist/``
    train_images: RawFile
    train_labels: RawFile
    test_images: RawFile
    test_labels: RawFile

    def files(self) -> list[RawFile]:
        return [self.train_images, self.train_labels, self.test_images, self.test_labels]


DATASETS: dict[str, IdxDataset] = {
    "mnist": IdxDataset(
        mirror_folder="mnist",
        train_images=RawFile("train-images-idx3-ubyte.gz", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", 47040016),
        train_labels=RawFile("train-labels-idx1-ubyte.gz", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", 60008),
        test_images=RawFile("t10k-images-idx3-ubyte.gz", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", 7840016),
        test_labels=RawFile("t10k-labels-idx1-ubyte.gz", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", 10008),
    ),
    "fashion_mnist": IdxDataset(
        mirror_folder="fashion_mnist",
        train_images=RawFile("train-images-idx3-ubyte.gz", "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 47040016),
        train_labels=RawFile("train-labels-idx1-ubyte.gz", "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 60008),
        test_images=RawFile("t10k-images-idx3-ubyte.gz", "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 7840016),
        test_labels=RawFile("t10k-labels-idx1-ubyte.gz", "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 10008),
    ),
}


def dataset(source: str) -> IdxDataset:
    if source not in DATASETS:
        raise UserError(f"config key data.source: unknown dataset {source!r} (choose from {', '.join(DATASETS)})")
    return DATASETS[source]


def read_verified(path: Path, expected: RawFile) -> bytes:
    """Decompress ``path`` and check its content against the published hash."""
    try:
        with gzip.open(path, "rb") as handle:
            content = handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{path}: not a readable gzip file ({exc})") from None
    digest = hashlib.sha256(content).hexdigest()
    if digest != expected.sha256:
        raise UserError(
            f"{path}: checksum mismatch: decompressed SHA-256 {digest[:16]}... "
            f"({len(content)} bytes), expected {expected.sha256[:16]}... ({expected.size} bytes)"
        )
    return content


def _download(url: str, target: Path) -> None:
    """Stream ``url`` into ``target`` through a temp file, so a failure leaves nothing."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, leave=False) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def fetch(source: str, mirror: Optional[Path], urls: list[str], cache_dir: Path) -> dict[str, bytes]:
    """Return the verified decompressed content of each file of ``source``, by file name.

    With a mirror, files are read from ``<mirror>/<dataset folder>/`` only. Without one,
    they are downloaded into ``cache_dir`` from the first base URL that serves a file with
    the right content; a cached file that verifies is not downloaded again.
    """
    spec = dataset(source)
    contents: dict[str, bytes] = {}
    if mirror is not None:
        folder = mirror / spec.mirror_folder
        if not folder.is_dir():
            raise UserError(f"{folder}: dataset mirror folder not found (set by data.mirror or ${MIRROR_ENV})")
        for raw in spec.files():
            path = folder / raw.name
            if not path.is_file():
                raise UserError(f"{path}: missing from the dataset mirror")
            contents[raw.name] = read_verified(path, raw)
        return contents

    if not urls:
        raise UserError(f"config key data.urls: no download URLs and no mirror (set data.mirror or ${MIRROR_ENV})")
    for raw in spec.files():
        cached = cache_dir / raw.name
        if cached.is_file():
            try:
                contents[raw.name] = read_verified(cached, raw)
                continue
            except UserError as exc:
                log.warning("discarding bad cached file: %s", exc)
                cached.unlink()
        errors = []
        for base in urls:
            url = base.rstrip("/") + "/" + raw.name
            try:
                log.info("downloading %s", url)
                _download(url, cached)
                contents[raw.name] = read_verified(cached, raw)
                break
            except (urllib.error.URLError, OSError, UserError) as exc:
                cached.unlink(missing_ok=True)
                errors.append(f"{url}: {exc}")
        else:
            raise UserError(f"{raw.name}: no source gave a verified copy ({'; '.join(errors)})")
    return contents
