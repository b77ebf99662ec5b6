"""Mirror and download paths of dcgan.data.sources, the downloads against a real local HTTP server."""

import gzip
import shutil
from dataclasses import replace

import pytest
from conftest import MIRROR, archive_entry, compose_config, flower_archive, http_server

from dcgan.data import sources
from dcgan.errors import UserError

MNIST = sources.DATASETS["mnist"]
UNREACHABLE = "http://127.0.0.1:9/"  # the discard port: connection refused


def test_reads_and_verifies_the_mirror():
    contents = sources.fetch("mnist", MIRROR, [], cache_dir=None)
    assert {name: len(data) for name, data in contents.items()} == {f.name: f.size for f in MNIST.files()}


def test_mirror_missing_file_names_it(tmp_path):
    (tmp_path / "mnist").mkdir()
    shutil.copy(MIRROR / "mnist" / MNIST.train_labels.name, tmp_path / "mnist")
    with pytest.raises(
        UserError, match=f"{tmp_path / 'mnist' / MNIST.train_images.name}: missing from the dataset mirror"
    ):
        sources.fetch("mnist", tmp_path, [], cache_dir=None)


def test_mirror_without_dataset_folder(tmp_path):
    with pytest.raises(UserError, match="dataset mirror folder not found"):
        sources.fetch("mnist", tmp_path, [], cache_dir=None)


def test_downloads_verifies_and_caches(tmp_path):
    cache = tmp_path / "cache"
    with http_server(MIRROR / "mnist") as url:
        contents = sources.fetch("mnist", None, [url], cache)
    assert sorted(p.name for p in cache.iterdir()) == sorted(f.name for f in MNIST.files())
    # Server gone: the verified cache is used, nothing is downloaded again.
    assert sources.fetch("mnist", None, [UNREACHABLE], cache) == contents


def test_corrupted_download_is_refused_and_next_url_used(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for raw in MNIST.files():
        content = gzip.decompress((MIRROR / "mnist" / raw.name).read_bytes())
        flipped = content[:-1] + bytes([content[-1] ^ 0xFF])  # right size, one byte wrong
        (bad / raw.name).write_bytes(gzip.compress(flipped, compresslevel=1))  # fast: 47 MB of training images
    cache = tmp_path / "cache"
    with http_server(bad) as bad_url, http_server(MIRROR / "mnist") as good_url:
        with pytest.raises(UserError, match="no source gave a verified copy.*checksum mismatch"):
            sources.fetch("mnist", None, [bad_url], cache)
        assert list(cache.iterdir()) == []  # nothing unverified left behind
        contents = sources.fetch("mnist", None, [bad_url, good_url], cache)
    assert len(contents) == 4


def test_no_mirror_and_no_urls():
    with pytest.raises(UserError, match="config key data.urls"):
        sources.fetch("mnist", None, [], cache_dir=None)


def test_unknown_dataset():
    with pytest.raises(UserError, match="config key data.source: unknown dataset 'cifar'"):
        sources.dataset("cifar")


def test_archive_with_a_wrong_hash_is_refused_and_removed(tmp_path):
    tgz = flower_archive(tmp_path / "served")
    cache = tmp_path / "raw" / "tf_flowers"
    with http_server(tgz.parent) as url:
        entry = archive_entry(tgz, [UNREACHABLE + tgz.name, url + tgz.name])
        wrong = replace(entry, sha256="0" * 64)
        with pytest.raises(UserError) as error:
            sources.fetch_archive(wrong, cache)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"flower_photos.tgz: no source gave a verified copy ({UNREACHABLE}{tgz.name}: ")
    mismatch = (
        f"checksum mismatch: SHA-256 {entry.sha256} ({entry.size} bytes), expected {wrong.sha256} ({entry.size} bytes)"
    )
    assert message.endswith(f"; {url}{tgz.name}: {cache / tgz.name}: {mismatch})")
    assert list(cache.iterdir()) == []  # no archive, no temp file, no extracted folder


def test_archive_member_outside_its_folder_is_refused(tmp_path):
    tgz = flower_archive(tmp_path / "served", extra_member="../evil.jpg")
    cache = tmp_path / "raw" / "tf_flowers"
    with http_server(tgz.parent) as url:
        refused = (
            r"flower_photos.tgz: cannot extract \('\.\./evil\.jpg' would be extracted to .* outside the destination\)$"
        )
        with pytest.raises(UserError, match=refused):
            sources.fetch_archive(archive_entry(tgz, [url + tgz.name]), cache)
    assert list(cache.iterdir()) == []
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["flower_photos.tgz", "raw", "served", "tf_flowers"]


def test_image_folder_source_prefers_the_mirror_then_the_archive(tmp_path, monkeypatch):
    flowers = compose_config(["data=flowers64"]).data
    assert sources.image_folder_source(flowers, tmp_path) == (MIRROR / "flowers_ccby" / "images", "prefix")
    own_folder = compose_config(["data=flowers64", f"data.path={tmp_path}", "data.labels=none"]).data
    assert sources.image_folder_source(own_folder, tmp_path) == (
        tmp_path,
        "none",
    )  # data.download is for mirror: paths only
    monkeypatch.delenv("DCGAN_DATA_MIRROR")
    with pytest.raises(
        UserError,
        match="config key data.path: 'mirror:flowers_ccby/images' is inside the dataset mirror, but none is set",
    ):
        sources.image_folder_source(compose_config(["data=flowers64", "data.download=null"]).data, tmp_path)
    with pytest.raises(
        UserError, match=r"config key data.download: unknown archive 'imagenet' \(choose from tf_flowers\)"
    ):
        sources.image_folder_source(compose_config(["data=flowers64", "data.download=imagenet"]).data, tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded
