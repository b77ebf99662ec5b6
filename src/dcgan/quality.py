"""Scoring generated images against the real test split in a feature space.

The feature space is the penultimate layer of the dataset's domain classifier (see
``dcgan.domain_classifier``) or, with ``metrics.features=inception``, of Keras' ImageNet
InceptionV3. The formulas live in ``dcgan.metrics``; this module feeds them.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from dcgan import metrics
from dcgan.config import MetricsConfig
from dcgan.data.pipeline import load_images
from dcgan.domain_classifier import classifier_for
from dcgan.errors import UserError

QUALITY_KEYS = (
    "fid",
    "kid",
    "classifier_score",
    "precision",
    "recall",
    "density",
    "coverage",
    "modes_covered",
    "mode_kl",
    "smallest_class_share",
)
BATCH = 250


class FeatureSpace:
    """Images in the data's pixel range -> (features, class probabilities)."""

    def __init__(
        self, network: keras.Model, pixel_range: list[float], accuracy: float | None = None, inception: bool = False
    ):
        self.network = network
        self.pixel_range = pixel_range
        self.accuracy = accuracy  # the domain classifier's test accuracy
        self.inception = inception

    def _prepare(self, images: tf.Tensor) -> tf.Tensor:
        if not self.inception:
            return images
        # InceptionV3's standard input: 299x299 RGB scaled to [-1, 1].
        low, high = self.pixel_range
        images = (tf.cast(images, tf.float32) - low) / (high - low) * 2.0 - 1.0
        if images.shape[-1] == 1:
            images = tf.image.grayscale_to_rgb(images)
        return tf.image.resize(images, (299, 299), method="bilinear", antialias=True)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features, probs = [], []
        for start in range(0, len(images), BATCH):
            f, p = self.network(self._prepare(tf.convert_to_tensor(images[start : start + BATCH])), training=False)
            features.append(np.asarray(f, np.float64))
            probs.append(np.asarray(p, np.float64))
        return np.concatenate(features), np.concatenate(probs)


def inception_space(pixel_range: list[float]) -> FeatureSpace:
    """InceptionV3 with ImageNet weights from the Keras cache, downloading them if needed."""
    try:
        network = keras.applications.InceptionV3(weights="imagenet")
    except Exception as exc:  # Keras raises plain Exceptions for failed downloads
        reason = str(exc).splitlines()[0][:200]
        cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
        raise UserError(
            "config key metrics.features: inception needs Keras' InceptionV3 ImageNet weights, which are not in "
            f"the Keras cache ({cache}) and could not be downloaded: {reason}"
        ) from None
    features = keras.Model(network.inputs, [network.get_layer("avg_pool").output, network.outputs[0]])
    return FeatureSpace(features, pixel_range, inception=True)


def feature_space(
    metrics: MetricsConfig, classifier_dir: str | Path, prepared: Path, manifest: dict
) -> FeatureSpace | None:
    """The configured feature space (a domain classifier kept in ``classifier_dir``); None when
    the classifier is asked for but the data has no class labels (the metrics are then skipped,
    with a warning)."""
    if metrics.features == "inception":
        return inception_space(manifest["normalization"]["range"])
    classifier = classifier_for(metrics.classifier, classifier_dir, prepared, manifest)
    return (
        None
        if classifier is None
        else FeatureSpace(classifier[0], manifest["normalization"]["range"], accuracy=classifier[1])
    )


def scorer_for(
    metrics: MetricsConfig, classifier_dir: str | Path, prepared: Path, manifest: dict, count: int
) -> Scorer | None:
    """A scorer of ``count`` samples against the test split in the configured feature space
    (training the domain classifier first if needed); None for data without class labels."""
    space = feature_space(metrics, classifier_dir, prepared, manifest)
    return None if space is None else Scorer(space, metrics, prepared, manifest, count)


class Scorer:
    """The real test split's features, computed once, and scores of generated images against them."""

    def __init__(self, space: FeatureSpace, settings: MetricsConfig, prepared: Path, manifest: dict, count: int):
        real, labels = load_images(prepared, manifest, "test", count)
        self.space = space
        self.settings = settings
        self.real_features, real_probs = space(real)
        # Mode coverage compares predicted classes with the real ones: the true labels for
        # the domain classifier, Inception's own predictions on the real images otherwise.
        self.num_classes = real_probs.shape[1]
        self.real_classes = np.argmax(real_probs, axis=1) if space.inception else labels.astype(np.int64)

    @property
    def count(self) -> int:
        return len(self.real_features)

    def score(self, images: np.ndarray) -> dict[str, float]:
        features, probs = self.space(images)
        if not (np.isfinite(features).all() and np.isfinite(probs).all()):  # a diverged generator
            return {key: float("nan") for key in QUALITY_KEYS}
        settings = self.settings
        scores = metrics.quality_metrics(
            self.real_features,
            features,
            probs,
            self.real_classes,
            self.num_classes,
            k_precision=settings.k_precision,
            k_density=settings.k_density,
            kid_subset_size=settings.kid_subset_size,
            kid_subsets=settings.kid_subsets,
        )
        return {key: float(scores[key]) for key in QUALITY_KEYS}

    def confidence(self, images: np.ndarray) -> np.ndarray:
        """The classifier's top class probability for each image."""
        return self.space(images)[1].max(axis=1)


def samples_of(generator: keras.Model, noise: np.ndarray) -> np.ndarray:
    """The generator's images for ``noise``, in batches, in inference mode."""
    return np.concatenate(
        [np.asarray(generator(noise[i : i + BATCH], training=False)) for i in range(0, len(noise), BATCH)]
    )
