import gzip

import numpy as np
import pytest
from conftest import MIRROR
from synthetic_mirror import idx_bytes

from dcgan.data import idx, sources
from dcgan.errors import UserError

MNIST = sources.DATASETS["mnist"]


@pytest.mark.real_data
def test_parses_real_mnist_test_split():
    images = sources.read_verified(MIRROR / "mnist" / MNIST.test_images.name, MNIST.test_images)
    labels = sources.read_verified(MIRROR / "mnist" / MNIST.test_labels.name, MNIST.test_labels)
    x, y = idx.parse_pair(images, labels, "images", "labels")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and set(np.unique(y)) == set(range(10))
    assert y[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first test labels


def test_round_trip_of_synthetic_file():
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert np.array_equal(idx.parse_idx(idx_bytes(array), "x", 3), array)


def test_wrong_magic_number():
    data = bytearray(idx_bytes(np.zeros((2, 3, 4))))
    data[2] = 0x0D  # float type code
    with pytest.raises(UserError, match=r"x: wrong IDX magic number 0x00000d03"):
        idx.parse_idx(bytes(data), "x", 3)


def test_labels_file_where_images_expected():
    with pytest.raises(UserError, match="wrong IDX magic"):
        idx.parse_idx(idx_bytes(np.zeros(5)), "x", 3)


@pytest.mark.parametrize("cut", [2, 10, 30])
def test_truncated_file(cut):
    data = idx_bytes(np.zeros((2, 3, 4)))
    with pytest.raises(UserError, match="x: truncated"):
        idx.parse_idx(data[: len(data) - cut] if cut > 10 else data[:cut], "x", 3)


def test_count_mismatch_between_images_and_labels():
    with pytest.raises(UserError, match="img: 3 images but lab has 2 labels"):
        idx.parse_pair(idx_bytes(np.zeros((3, 2, 2))), idx_bytes(np.zeros(2)), "img", "lab")


def test_corrupt_gzip_is_refused(tmp_path):
    good = (MIRROR / "mnist" / MNIST.test_labels.name).read_bytes()
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(good[:-40])  # cut the stream: CRC and tail missing
    with pytest.raises(UserError, match=f"{bad}: not a readable gzip file"):
        sources.read_verified(bad, MNIST.test_labels)


def test_checksum_mismatch_is_refused(tmp_path):
    content = gzip.decompress((MIRROR / "mnist" / MNIST.test_labels.name).read_bytes())
    tampered = tmp_path / "labels.gz"
    tampered.write_bytes(gzip.compress(content[:-1] + bytes([(content[-1] + 1) % 10])))
    with pytest.raises(UserError, match="checksum mismatch"):
        sources.read_verified(tampered, MNIST.test_labels)


def test_differently_compressed_copy_is_accepted(tmp_path):
    """Integrity is about content: a re-gzipped genuine file verifies."""
    content = gzip.decompress((MIRROR / "mnist" / MNIST.test_labels.name).read_bytes())
    copy = tmp_path / "labels.gz"
    copy.write_bytes(gzip.compress(content, compresslevel=1))
    assert sources.read_verified(copy, MNIST.test_labels) == content
