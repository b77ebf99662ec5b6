"""Mirror and download paths of dcgan.data.sources, the download against a real local HTTP server."""

import functools
import gzip
import http.server
import shutil
import threading
from contextlib import contextmanager

import pytest

from conftest import MIRROR
from dcgan.data import sources
from dcgan.errors import UserError

MNIST = sources.DATASETS["mnist"]


@contextmanager
def http_server(folder):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_reads_and_verifies_the_mirror():
    contents = sources.fetch("mnist", MIRROR, [], cache_dir=None)
    assert {name: len(data) for name, data in contents.items()} == {f.name: f.size for f in MNIST.files()}


def test_mirror_missing_file_names_it(tmp_path):
    (tmp_path / "mnist").mkdir()
    shutil.copy(MIRROR / "mnist" / MNIST.train_labels.name, tmp_path / "mnist")
    with pytest.raises(UserError, match=f"{tmp_path / 'mnist' / MNIST.train_images.name}: missing from the dataset mirror"):
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
    assert sources.fetch("mnist", None, ["http://127.0.0.1:9/"], cache) == contents


def test_corrupted_download_is_refused_and_next_url_used(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for raw in MNIST.files():
        content = gzip.decompress((MIRROR / "mnist" / raw.name).read_bytes())
        flipped = content[:-1] + bytes([content[-1] ^ 0xFF])  # right size, one byte wrong
        (bad / raw.name).write_bytes(gzip.compress(flipped))
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
