"""Image-folder sources on real photos from the mirror, bad files included."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import MIRROR, compose_config
from PIL import Image

from dcgan.data import image_folder
from dcgan.data.pipeline import load_images
from dcgan.data.prepare import prepare
from dcgan.data.tfrecords import to_uint8
from dcgan.errors import UserError

FLOWERS = MIRROR / "flowers_ccby" / "images"


def flowers(kind: str, count: int) -> list[Path]:
    return sorted(FLOWERS.glob(f"{kind}_*.jpg"))[:count]


@pytest.fixture
def messy_folder(tmp_path) -> Path:
    """Two class sub-folders of real photos plus every kind of awkward file."""
    root = tmp_path / "photos"
    for kind in ("daisy", "roses"):
        (root / kind).mkdir(parents=True)
        for photo in flowers(kind, 10):
            shutil.copy(photo, root / kind / photo.name)
    daisy = root / "daisy"
    good = flowers("daisy", 11)[-1].read_bytes()
    (daisy / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (daisy / "notes.jpg").write_text("this is not an image")
    Image.new("RGB", (10, 10), "red").save(daisy / "tiny.png")
    rgba = Image.open(flowers("daisy", 12)[-1]).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(root / "roses" / "transparent.png")
    Image.open(flowers("roses", 11)[-1]).convert("L").save(root / "roses" / "grey.jpg")
    Image.open(flowers("roses", 12)[-1]).convert("CMYK").save(root / "roses" / "cmyk.jpg")
    return root


def folder_config(tmp_path, folder, *overrides):
    return compose_config(
        [
            "data=flowers64",
            f"data.path={folder}",
            "data.name=photos",
            "data.image_size=32",
            "data.shards=2",
            *overrides,
        ],
        tmp_path,
    )


def prepare_folder(tmp_path, folder, *overrides) -> dict:
    config = folder_config(tmp_path, folder, *overrides)
    return prepare(config.data, config.paths)


def test_skips_and_reports_bad_files_and_converts_the_rest(tmp_path, messy_folder):
    manifest = prepare_folder(
        tmp_path, messy_folder, "data.labels=subfolder", "data.max_skipped_fraction=0.2", "data.test_fraction=0.2"
    )
    skipped = {entry["file"]: entry["reason"] for entry in manifest["skipped"]}
    assert set(skipped) == {"daisy/truncated.jpg", "daisy/notes.jpg", "daisy/tiny.png"}
    assert skipped["daisy/tiny.png"].startswith("too small (10x10")
    assert skipped["daisy/notes.jpg"].startswith("unreadable")
    assert manifest["classes"] == ["daisy", "roses"] and manifest["source_files"] == 26
    counts = {split: info["count"] for split, info in manifest["splits"].items()}
    assert counts["train"] + counts["test"] == 23 and counts["test"] >= 1
    assert manifest["image_shape"] == [32, 32, 3]
    images, labels = load_images(tmp_path / "data/prepared/photos", manifest, "train", 100)
    assert images.shape == (counts["train"], 32, 32, 3) and set(labels) == {0, 1}
    written = json.loads((tmp_path / "data/prepared/photos/manifest.json").read_text())
    assert len(written["skipped"]) == 3


def test_conversions_of_unusual_modes(messy_folder):
    grey, reason = image_folder.load_square(messy_folder / "roses" / "grey.jpg", 32, 3)
    assert reason == "" and grey.shape == (32, 32, 3)
    assert np.array_equal(grey[..., 0], grey[..., 1])  # grey stays grey in RGB
    rgba, _ = image_folder.load_square(messy_folder / "roses" / "transparent.png", 32, 3)
    assert rgba.shape == (32, 32, 3) and rgba.mean() > 100  # composited on white
    cmyk, _ = image_folder.load_square(messy_folder / "roses" / "cmyk.jpg", 16, 1)
    assert cmyk.shape == (16, 16, 1)


def test_center_crop_keeps_the_middle(tmp_path):
    wide = np.zeros((40, 120, 3), np.uint8)
    wide[:, 40:80] = 255  # white square in the middle third
    Image.fromarray(wide).save(tmp_path / "wide.png")
    square, _ = image_folder.load_square(tmp_path / "wide.png", 20, 3)
    assert square.min() > 240


def test_too_many_bad_files_is_an_error_and_writes_nothing(tmp_path, messy_folder):
    config = folder_config(tmp_path, messy_folder, "data.labels=subfolder", "data.max_skipped_fraction=0.05")
    with pytest.raises(
        UserError, match=r"photos: 3 of 26 image files could not be used .*data.max_skipped_fraction is 0.05"
    ):
        prepare(config.data, config.paths)
    assert not (tmp_path / "data/prepared/photos").exists()
    assert not list((tmp_path / "data/prepared").iterdir())  # no data, no temp folder, no lock file


def test_all_files_unreadable(tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    for i in range(20):
        (folder / f"x{i}.jpg").write_text("nope")
    # Counted over both splits: the 2 files of the test split are bad too ("18 of 20" before).
    with pytest.raises(UserError, match="all 20 image files could not be used"):
        prepare_folder(tmp_path, folder, "data.labels=none", "data.test_fraction=0.1")
    with pytest.raises(UserError, match="all 20 image files could not be used"):
        prepare_folder(tmp_path, folder, "data.labels=none", "data.test_fraction=0.1", "data.max_skipped_fraction=1.0")


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(UserError, match=f"{tmp_path / 'nowhere'}: image folder not found"):
        prepare_folder(tmp_path, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image files"):
        prepare_folder(tmp_path, tmp_path / "empty")


@pytest.mark.real_data
def test_prefix_labels_on_the_mirror_flowers(tmp_path):
    config = compose_config(["data=flowers64", "data.image_size=16", "data.limit=40", "data.shards=1"], tmp_path)
    manifest = prepare(config.data, config.paths)
    assert manifest["classes"] == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert manifest["splits"]["train"]["count"] == 40
    assert 250 < manifest["splits"]["test"]["count"] < 420  # ~10% of 3,311, by path hash
    images, _ = load_images(tmp_path / "data/prepared/flowers64", manifest, "test", 5)
    assert to_uint8(images, manifest).std() > 20  # real photo content, not blank


def test_split_is_stable_per_file():
    assert image_folder.in_test_split("daisy/a.jpg", 0.5) == image_folder.in_test_split("daisy/a.jpg", 0.5)
    share = np.mean([image_folder.in_test_split(f"{i}.jpg", 0.1) for i in range(5000)])
    assert 0.08 < share < 0.12


def test_mirror_path_needs_a_mirror(monkeypatch):
    monkeypatch.delenv("DCGAN_DATA_MIRROR")
    with pytest.raises(
        UserError, match="config key data.path: 'mirror:flowers_ccby/images' is inside the dataset mirror"
    ):
        compose_config(["data=flowers64"]).data.folder()
