"""The prepare stage on real mirror data: TFRecord round trip, manifest, resize, atomicity."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import MIRROR, TINY, archive_entry, compose_config, flower_archive, http_server

from dcgan.data import idx, sources, tfrecords
from dcgan.data.pipeline import load_images, training_dataset
from dcgan.data.prepare import prepare
from dcgan.errors import UserError
from dcgan.runtime import set_global_seed

MNIST = sources.DATASETS["mnist"]


def mirror_train_images(limit: int) -> tuple[np.ndarray, np.ndarray]:
    images = sources.read_verified(MIRROR / "mnist" / MNIST.train_images.name, MNIST.train_images)
    labels = sources.read_verified(MIRROR / "mnist" / MNIST.train_labels.name, MNIST.train_labels)
    x, y = idx.parse_pair(images, labels, "i", "l")
    return x[:limit], y[:limit]


def test_round_trip_preserves_every_pixel_and_label(tiny_prepared):
    folder = Path(tiny_prepared.paths.prepared_dir) / "mnist"
    manifest = tfrecords.load_manifest(folder)
    images, labels = load_images(folder, manifest, "train", 10_000)
    expected_x, expected_y = mirror_train_images(512)
    # Shards are written round-robin; reading interleaves them back into file order.
    assert images.shape == (512, 28, 28, 1)
    assert np.array_equal(tfrecords.to_uint8(images, manifest)[..., 0], expected_x)
    assert np.array_equal(labels, expected_y)
    assert images.min() == -1.0 and images.max() == 1.0


def test_manifest_describes_the_data(tiny_prepared):
    folder = Path(tiny_prepared.paths.prepared_dir) / "mnist"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["splits"]["train"]["count"] == 512
    test_labels = sources.read_verified(MIRROR / "mnist" / MNIST.test_labels.name, MNIST.test_labels)
    mirror_test_images = len(idx.parse_idx(test_labels, "l", 1))  # 10,000, or the synthetic mirror's 512
    assert manifest["test_limit"] == 1000  # debug=tiny's data.test_limit
    assert manifest["splits"]["test"]["count"] == min(1000, mirror_test_images)
    assert [s["count"] for s in manifest["splits"]["train"]["shards"]] == [256, 256]
    assert manifest["image_shape"] == [28, 28, 1] and manifest["storage_dtype"] == "uint8"
    assert manifest["normalization"]["range"] == [-1.0, 1.0]
    assert manifest["source_files"][MNIST.train_images.name] == MNIST.train_images.sha256
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["manifest.json"] + [s["file"] for split in manifest["splits"].values() for s in split["shards"]]
    )


@pytest.mark.slow  # six processes, each importing TensorFlow
def test_same_images_give_the_same_shard_bytes_in_every_process(tmp_path):
    # Protobuf wrote an Example's feature map in an order that varied from process to
    # process (about half of them put "label" first), so the shards and the manifest hashes
    # that DVC, the classifier cache and resume compare changed between two prepare runs.
    # Six processes all agreeing by chance had a 2 / 2**6 probability.
    write = (
        "import json, sys; from pathlib import Path; import numpy as np; from dcgan.data import tfrecords; "
        "images = [(np.full((2, 2, 1), i, np.uint8), i) for i in range(3)]; "
        "manifest = tfrecords.write_prepared(Path(sys.argv[1]), {'train': (images, 3)}, 1, {}); "
        "print(json.dumps(manifest['splits']))"
    )
    runs = [
        subprocess.Popen([sys.executable, "-c", write, str(tmp_path / str(i))], stdout=subprocess.PIPE, text=True)
        for i in range(6)
    ]
    manifests = {run.communicate(timeout=300)[0].splitlines()[-1] for run in runs}
    assert all(run.returncode == 0 for run in runs)
    assert len(manifests) == 1


def test_training_batches_are_seeded_per_epoch(tiny_prepared):
    folder = Path(tiny_prepared.paths.prepared_dir) / "mnist"
    manifest = tfrecords.load_manifest(folder)

    def first_batches(start_step, seed=1):
        dataset = training_dataset(folder, manifest, 64, seed, 512, start_step)
        return [batch.numpy() for batch in dataset.take(16)]  # 8 batches per pass

    from_zero = first_batches(0)
    assert all(b.shape == (64, 28, 28, 1) for b in from_zero)
    assert not np.array_equal(from_zero[0], from_zero[8])  # epochs differ in order
    assert np.array_equal(
        np.sort(np.concatenate(from_zero[:8]), axis=None), np.sort(np.concatenate(from_zero[8:]), axis=None)
    )
    # A run resumed at step k sees exactly what an uninterrupted run saw from step k on.
    assert all(np.array_equal(a, b) for a, b in zip(first_batches(8)[:8], from_zero[8:]))
    assert all(np.array_equal(a, b) for a, b in zip(first_batches(3)[:13], from_zero[3:]))
    assert not np.array_equal(first_batches(0, seed=2)[0], from_zero[0])

    # Global seed 0 (e.g. train.seed=0) must not break the tensor-seeded per-epoch shuffle.
    set_global_seed(0)
    assert first_batches(0, seed=0)[0].shape == (64, 28, 28, 1)


def test_resize_to_32(tmp_path):
    config = compose_config(TINY + ["data.image_size=32", "data.limit=16"], tmp_path)
    manifest = prepare(config.data, config.paths)
    assert manifest["image_shape"] == [32, 32, 1] and manifest["resize"]
    images, _ = load_images(tmp_path / "data/prepared/mnist", manifest, "train", 16)
    assert images.shape == (16, 32, 32, 1)
    assert -1.0 <= images.min() and images.max() <= 1.0
    # Resizing keeps the content: mean brightness matches the 28px originals closely.
    original, _ = mirror_train_images(16)
    assert abs(tfrecords.to_uint8(images, manifest).mean() - original.mean()) < 3


def test_prepare_draws_no_progress_bar_off_a_terminal(tmp_path, capsys):
    config = compose_config(TINY + ["data.limit=16"], tmp_path)
    prepare(config.data, config.paths)
    assert "writing train" not in capsys.readouterr().err  # a log or CI gets its log lines only


def test_interrupted_prepare_leaves_previous_dataset_intact(tmp_path, monkeypatch):
    config = compose_config(TINY + ["data.limit=8"], tmp_path)
    prepare(config.data, config.paths)
    folder = tmp_path / "data/prepared/mnist"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    real_write_split = tfrecords._write_split

    def crash_on_test_split(folder_, split, *args):
        if split == "test":
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-write
        return real_write_split(folder_, split, *args)

    monkeypatch.setattr(tfrecords, "_write_split", crash_on_test_split)
    config.data.limit = 16
    with pytest.raises(KeyboardInterrupt):
        prepare(config.data, config.paths)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in folder.parent.iterdir()) == ["mnist"]  # no temp folders or lock file left


def test_missing_prepared_data_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="prepared dataset not found; run the prepare stage"):
        tfrecords.load_manifest(tmp_path)


def test_missing_shard_is_detected(tmp_path):
    config = compose_config(TINY + ["data.limit=8"], tmp_path)
    manifest = prepare(config.data, config.paths)
    shard = tmp_path / "data/prepared/mnist" / manifest["splits"]["train"]["shards"][0]["file"]
    shard.unlink()
    with pytest.raises(UserError, match=f"{shard}: shard listed in manifest.json is missing"):
        tfrecords.load_manifest(shard.parent)


def test_an_edited_record_count_names_the_manifest_before_the_classifier_is_touched(tmp_path):
    from dcgan.domain_classifier import train_classifier

    config = compose_config(TINY + ["data.limit=8"], tmp_path)
    prepare(config.data, config.paths)
    path = tmp_path / "data/prepared/mnist/manifest.json"
    manifest = json.loads(path.read_text())
    manifest["splits"]["train"]["count"] = 100000
    path.write_text(json.dumps(manifest))
    with pytest.raises(UserError) as error:
        train_classifier(config)
    assert str(error.value) == (
        f"{path}: splits.train.count is 100000, but its shards hold 8 records; "
        "rerun prepare (dvc repro prepare, or python src/prepare.py)"
    )
    assert not (tmp_path / "models/classifier").exists()

    manifest["splits"]["train"]["count"] = 8
    manifest["splits"]["train"]["shards"][0]["count"] += 1
    path.write_text(json.dumps(manifest))
    shard = manifest["splits"]["train"]["shards"][0]
    with pytest.raises(
        UserError,
        match=f"{path}: lists {shard['count']} records for {shard['file']}, which holds {shard['count'] - 1};",
    ):
        tfrecords.load_manifest(path.parent)


def test_training_prepares_missing_or_stale_data(tmp_path):
    from dcgan.data.prepare import prepared_dataset

    config = compose_config(TINY + ["data.limit=8"], tmp_path)
    folder, manifest = prepared_dataset(config.data, config.paths)  # missing: prepared now
    assert manifest["splits"]["train"]["count"] == 8
    stamp = (folder / "manifest.json").stat().st_mtime_ns
    assert prepared_dataset(config.data, config.paths)[1] == manifest  # up to date: reused as is
    assert (folder / "manifest.json").stat().st_mtime_ns == stamp
    config.data.image_size = 32  # stale: prepared again
    assert prepared_dataset(config.data, config.paths)[1]["image_shape"] == [32, 32, 1]


def test_flowers_without_a_mirror_come_from_the_verified_archive(tmp_path, monkeypatch):
    monkeypatch.delenv("DCGAN_DATA_MIRROR")
    tgz = flower_archive(tmp_path / "served")
    config = compose_config(["data=flowers64", "data.image_size=32", "data.test_fraction=0.5"], tmp_path)
    with http_server(tgz.parent) as url:
        # The first URL is unreachable: the next one is used.
        monkeypatch.setitem(
            sources.ARCHIVES, "tf_flowers", archive_entry(tgz, ["http://127.0.0.1:9/flower_photos.tgz", url + tgz.name])
        )
        manifest = prepare(config.data, config.paths)
    extracted = tmp_path / "data/raw/tf_flowers/flower_photos"
    assert [p.name for p in extracted.parent.iterdir()] == ["flower_photos"]  # the archive and temp files are gone
    assert manifest["source_folder"] == str(extracted)
    assert manifest["classes"] == [
        "daisy",
        "roses",
    ]  # from the archive's sub-folders, not the mirror's file-name prefixes
    assert manifest["labels"] == "subfolder" and manifest["data_config"]["data.labels"] == "prefix"
    assert manifest["source_files"] == 12 and not manifest["skipped"]
    assert manifest["splits"]["train"]["count"] + manifest["splits"]["test"]["count"] == 12
    # Server gone: the extracted folder is reused, nothing is downloaded again.
    assert prepare(config.data, config.paths)["splits"] == manifest["splits"]


def test_content_digest_and_record_order_do_not_depend_on_sharding(tmp_path):
    """Why data.shards does not change a training run (docs/reproducibility.md)."""
    digests, orders = set(), []
    for shards in (1, 3):
        config = compose_config(TINY + ["data.limit=50", f"data.shards={shards}"], tmp_path / str(shards))
        manifest = prepare(config.data, config.paths)
        digests.add(manifest["content_sha256"])
        folder = Path(config.paths.prepared_dir) / "mnist"
        orders.append([label.numpy() for _, label in tfrecords.read_split(folder, manifest, "train")])
        assert len(manifest["splits"]["train"]["shards"]) == shards
    assert len(digests) == 1 and orders[0] == orders[1]
