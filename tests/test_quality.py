"""The quality metrics in a real domain-classifier feature space, on real MNIST: the floor
(real vs real), pure noise and a mode-collapsed sample set must read as what they are."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import TINY, compose_config, run_stage

from dcgan import quality
from dcgan.config import ClassifierConfig
from dcgan.data.pipeline import load_images
from dcgan.data.tfrecords import load_manifest
from dcgan.domain_classifier import build_classifier, classifier_for, training_epochs
from dcgan.errors import UserError

COUNT = 2000


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A classifier trained for one epoch on MNIST (~98.5%), the scorer over the first 2,000
    test images, and the next 4,000 test images as other real data. (A classifier trained
    on less data maps noise close to digits: precision 0.78 for noise after 2 epochs on
    12,000 images; 0.08 here; 0.015 with the default 3 epochs.)"""
    workdir = tmp_path_factory.mktemp("quality")
    overrides = [*TINY, "data.limit=60000", "data.test_limit=null", "metrics.classifier.epochs=1"]
    # Trained by the classifier stage in a process of its own, as users run it: this process's
    # TensorFlow may carry other tests' global settings (op determinism, seeds, policies).
    run_stage("classifier", *overrides, cwd=workdir, own_process=True)
    config = compose_config(overrides, workdir)
    prepared = Path(config.paths.prepared_dir) / config.data.name
    manifest = load_manifest(prepared)
    space = quality.feature_space(config.metrics, config.paths.classifier_dir, prepared, manifest)
    scorer = quality.Scorer(space, config.metrics, prepared, manifest, COUNT)
    images, labels = load_images(prepared, manifest, "test", 3 * COUNT)
    return config, prepared, manifest, scorer, images[COUNT:], labels[COUNT:]


@pytest.mark.slow  # a real-MNIST classifier: prepares 60,000 images, trains an epoch
def test_classifier_is_accurate_and_cached(scored):
    config, prepared, manifest, scorer, _, _ = scored
    assert scorer.space.accuracy > 0.97  # ~99.3% with the default 3 epochs
    again = classifier_for(
        config.metrics.classifier, config.paths.classifier_dir, prepared, manifest
    )  # from the cache: same accuracy, no retraining
    assert again[1] == scorer.space.accuracy


def test_classifier_scales_large_images_down_and_trains_small_sets_longer():
    settings = ClassifierConfig()
    photos, same_at_64 = build_classifier((128, 128, 3), 5, settings), build_classifier((64, 64, 3), 5, settings)
    assert isinstance(photos.layers[1], keras.layers.Resizing) and photos.layers[2].input.shape == (None, 64, 64, 3)
    assert photos.count_params() == same_at_64.count_params()
    assert not any(isinstance(layer, keras.layers.Resizing) for layer in same_at_64.layers)
    assert training_epochs(settings, steps_per_epoch=469) == 3  # MNIST at batch 128: the configured epochs
    assert training_epochs(settings, steps_per_epoch=23) == 27  # 2,934 flower photos: >= 600 steps
    assert training_epochs(ClassifierConfig(min_steps=0), steps_per_epoch=23) == 3


@pytest.mark.slow  # a real-MNIST classifier: prepares 60,000 images, trains an epoch
def test_floor_noise_and_collapse_read_as_what_they_are(scored):
    _, _, _, scorer, other_real, other_labels = scored
    floor = scorer.score(other_real[:COUNT])
    noise = scorer.score(np.random.default_rng(0).uniform(-1, 1, other_real[:COUNT].shape).astype(np.float32))
    one_class = other_real[other_labels == 3]
    collapsed = scorer.score(one_class)
    same_size_floor = scorer.score(other_real[: len(one_class)])  # k-NN metrics depend on the set size

    # Real vs real: FID near 0, precision and recall near 1, every class present.
    assert floor["fid"] < 0.05 * noise["fid"]
    assert floor["precision"] > 0.8 and floor["recall"] > 0.8 and floor["coverage"] > 0.8
    assert floor["modes_covered"] == 10 and floor["mode_kl"] < 0.05 and floor["classifier_score"] > 8
    assert floor["smallest_class_share"] > 0.07  # MNIST's rarest digit (5) is ~9 % of the images

    # Noise: far away, nothing looks real.
    assert noise["precision"] < 0.15 and noise["density"] < 0.1 and noise["coverage"] < 0.05 and noise["recall"] < 0.05

    # One class only: realistic (precision stays high), but recall, coverage and modes collapse.
    assert collapsed["modes_covered"] == 1 and collapsed["mode_kl"] > 1.5 and collapsed["classifier_score"] < 1.5
    assert collapsed["smallest_class_share"] < 0.01
    assert collapsed["precision"] > 0.7
    assert collapsed["recall"] < 0.5 * same_size_floor["recall"]
    assert collapsed["coverage"] < 0.5 * same_size_floor["coverage"]
    assert collapsed["fid"] > 20 * floor["fid"]


def test_inception_features_without_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # no download, even with internet
    with pytest.raises(UserError) as error:
        quality.inception_space([-1.0, 1.0])
    assert str(error.value).startswith(
        "config key metrics.features: inception needs Keras' InceptionV3 ImageNet weights"
    )
    assert "\n" not in str(error.value)
