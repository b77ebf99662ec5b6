"""Where raw dataset files come from: a local mirror folder, or a verified download.

Integrity of IDX files is checked on the *decompressed* bytes: the same IDX files are
distributed with different gzip encodings (the official ``.gz``, Debian's, our mirror's),
but their content is fixed, so the SHA-256 of that content is what identifies a genuine
file. Image archives are published as one fixed file, so that file's SHA-256 is checked.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, TypeVar

from tqdm import tqdm

from dcgan.config import MIRROR_ENV, MIRROR_PREFIX, DataConfig
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
        train_images=RawFile(
            "train-images-idx3-ubyte.gz", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", 47040016
        ),
        train_labels=RawFile(
            "train-labels-idx1-ubyte.gz", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", 60008
        ),
        test_images=RawFile(
            "t10k-images-idx3-ubyte.gz", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", 7840016
        ),
        test_labels=RawFile(
            "t10k-labels-idx1-ubyte.gz", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", 10008
        ),
    ),
    "fashion_mnist": IdxDataset(
        mirror_folder="fashion_mnist",
        train_images=RawFile(
            "train-images-idx3-ubyte.gz", "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 47040016
        ),
        train_labels=RawFile(
            "train-labels-idx1-ubyte.gz", "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 60008
        ),
        test_images=RawFile(
            "t10k-images-idx3-ubyte.gz", "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 7840016
        ),
        test_labels=RawFile(
            "t10k-labels-idx1-ubyte.gz", "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 10008
        ),
    ),
}


@dataclass(frozen=True)
class ImageArchive:
    """An image-folder dataset published as one tar archive."""

    urls: tuple[str, ...]  # tried in order
    sha256: str  # of the archive file itself
    size: int  # bytes
    folder: str  # the top folder inside the archive, holding the images
    labels: str  # how that folder's layout gives the classes, as a data.labels value

    @property
    def file_name(self) -> str:
        return self.urls[0].rsplit("/", 1)[-1]


ARCHIVES: dict[str, ImageArchive] = {
    # Size and hash as published by TensorFlow Datasets (tensorflow_datasets/url_checksums/tf_flowers.txt):
    # 3,670 photos in flower_photos/<daisy|dandelion|roses|sunflowers|tulips>/, plus flower_photos/LICENSE.txt.
    "tf_flowers": ImageArchive(
        urls=(
            "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz",
            "http://download.tensorflow.org/example_images/flower_photos.tgz",
        ),
        sha256="4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c",
        size=228813984,
        folder="flower_photos",
        labels="subfolder",
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


def archive(name: str) -> ImageArchive:
    if name not in ARCHIVES:
        raise UserError(f"config key data.download: unknown archive {name!r} (choose from {', '.join(ARCHIVES)})")
    return ARCHIVES[name]


def _download(url: str, target: Path) -> None:
    """Stream ``url`` into ``target`` through a temp file, so a failure leaves nothing."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, leave=False, disable=None) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


Verified = TypeVar("Verified")


def _download_verified(urls: Iterable[str], target: Path, verify: Callable[[Path], Verified]) -> Verified:
    """Download ``target`` from the first URL whose file passes ``verify`` (which raises UserError);
    a bad file is removed and the next URL tried. Returns what ``verify`` returns."""
    errors = []
    for url in urls:
        try:
            log.info("downloading %s", url)
            _download(url, target)
            return verify(target)
        except (urllib.error.URLError, http.client.HTTPException, OSError, UserError) as exc:
            target.unlink(missing_ok=True)
            errors.append(f"{url}: {exc}")
    raise UserError(f"{target.name}: no source gave a verified copy ({'; '.join(errors)})")


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
        file_urls = [base.rstrip("/") + "/" + raw.name for base in urls]
        contents[raw.name] = _download_verified(file_urls, cached, lambda path: read_verified(path, raw))
    return contents


def _verify_archive(path: Path, spec: ImageArchive) -> None:
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()  # streamed: the archive may be large
    size = path.stat().st_size
    if (digest, size) != (spec.sha256, spec.size):
        raise UserError(
            f"{path}: checksum mismatch: SHA-256 {digest} ({size} bytes), expected {spec.sha256} ({spec.size} bytes)"
        )


def _extract(archive_path: Path, spec: ImageArchive, target: Path) -> None:
    """Unpack the archive into a temp folder beside ``target``, then move its ``spec.folder`` to
    ``target``: a failed or interrupted extraction leaves nothing there."""
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part"))
    try:
        with tarfile.open(archive_path) as tar:
            tar.extractall(staging, filter="data")  # refuses members that would land outside staging
        if not (staging / spec.folder).is_dir():
            raise UserError(f"{archive_path}: no {spec.folder}/ folder inside the archive")
        os.replace(staging / spec.folder, target)
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"{archive_path}: cannot extract ({exc})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_archive(spec: ImageArchive, cache_dir: Path) -> Path:
    """The image folder of ``spec``, downloaded, verified and extracted into ``cache_dir`` once.

    The folder only appears when completely extracted from a verified archive, so finding it
    means the work is done; the archive itself is not kept.
    """
    folder = cache_dir / spec.folder
    if folder.is_dir():
        return folder
    path = cache_dir / spec.file_name
    _download_verified(spec.urls, path, lambda downloaded: _verify_archive(downloaded, spec))
    try:
        log.info("extracting %s", path)
        _extract(path, spec, folder)
    finally:
        path.unlink()
    return folder


def image_folder_source(data: DataConfig, raw_dir: Path) -> tuple[Path, str]:
    """The image folder to read and how its files are labelled (a data.labels value).

    That is ``data.path``, unless it is inside a dataset mirror that is not set and
    ``data.download`` names an archive: then the archive's folder, downloaded into
    ``<raw_dir>/<archive name>/``, labelled by the archive's own layout (``data.labels``
    describes the mirror's copy).
    """
    spec = archive(data.download) if data.download else None  # looked up first: a typo fails even with a mirror
    if spec is not None and data.path.startswith(MIRROR_PREFIX) and data.mirror_dir() is None:
        log.info("no dataset mirror set: using the %s archive (data.download)", data.download)
        return fetch_archive(spec, raw_dir / data.download), spec.labels
    return data.folder(), data.labels
