"""The domain classifier per prepared dataset (the classifier stage, and the quality
metrics' "train it if missing"): the network whose penultimate layer is the quality
metrics' feature space, its training, and its cache in ``paths.classifier_dir/<data.name>``,
retrained only when the prepared data or ``metrics.classifier`` settings change.

Inception features suit ImageNet photos, not 28px digits (TF-GAN scores MNIST with an
MNIST classifier), so each dataset gets its own small VGG-style network trained on its
labelled training split."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import keras
import tensorflow as tf
from keras import layers

from dcgan.config import ClassifierConfig, Config, flatten, to_dict
from dcgan.data.prepare import prepared_dataset
from dcgan.data.tfrecords import manifest_sha256, normalize, read_split
from dcgan.files import locked, write_json
from dcgan.signals import StopAtSignal, stop_signals

log = logging.getLogger(__name__)

FEATURES = "features"  # name of the penultimate layer
MODEL = "classifier.keras"
REPORT = "classifier.json"


def build_classifier(image_shape: tuple[int, int, int], num_classes: int, settings: ClassifierConfig) -> keras.Model:
    """Blocks of two 3x3 ReLU convolutions and a 2x2 max-pool halve the side
    down to 7 or less (28 -> 7, 64 -> 4), widths doubling from ``settings.width`` up to 4x;
    then a ReLU Dense layer of ``settings.features`` units (the feature space), dropout and
    a softmax over the classes. No BatchNorm: its moving statistics lag behind on short
    trainings (tests, small folders), and inference must match what was trained.

    Images larger than ``settings.max_size`` are first scaled down to it (area averaging,
    inside the network, so real and generated images alike): a quarter of the cost per
    epoch at 128 px, which pays for the longer training small photo sets need (measured in
    docs/quality.md)."""
    inputs = keras.Input(image_shape)
    x, size, width = inputs, image_shape[0], settings.width
    if size > settings.max_size:
        x = layers.Resizing(settings.max_size, settings.max_size, interpolation="area")(x)
        size = settings.max_size
    while size > 7:
        for _ in range(2):
            x = layers.Conv2D(width, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
        size, width = size // 2, min(width * 2, settings.width * 4)
    x = layers.Flatten()(x)
    features = layers.Dense(settings.features, activation="relu", name=FEATURES)(x)
    x = layers.Dropout(0.3)(features)
    outputs = layers.Dense(num_classes, activation="softmax", name="classes", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="domain_classifier")


def with_features(classifier: keras.Model) -> keras.Model:
    """The same network returning (penultimate-layer features, class probabilities)."""
    return keras.Model(classifier.inputs, [classifier.get_layer(FEATURES).output, classifier.outputs[0]])


def _identity(settings: ClassifierConfig, prepared: Path) -> dict:
    return {
        "data.manifest_sha256": manifest_sha256(prepared),
        **flatten({"metrics.classifier": to_dict(settings)}),
    }


def _labelled(prepared: Path, manifest: dict, split: str, batch_size: int, seed: int | None = None) -> tf.data.Dataset:
    data = read_split(prepared, manifest, split).map(lambda image, label: (normalize(image, manifest), label))
    data = data.apply(tf.data.experimental.assert_cardinality(manifest["splits"][split]["count"]))
    if seed is not None:  # training: reshuffled every pass, repeated (fit counts the steps)
        data = data.shuffle(manifest["splits"][split]["count"], seed=seed).repeat()
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def training_epochs(settings: ClassifierConfig, steps_per_epoch: int) -> int:
    """``settings.epochs``, raised so training takes at least ``settings.min_steps`` steps:
    MNIST's 3 epochs are 1,407 steps, a few thousand photos' 3 epochs only 69."""
    return max(settings.epochs, -(-settings.min_steps // steps_per_epoch))


def _train(settings: ClassifierConfig, prepared: Path, manifest: dict, folder: Path) -> dict:
    report = {"identity": _identity(settings, prepared), "num_classes": manifest.get("num_classes", 0)}
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if report["num_classes"] < 2:
        log.warning(
            "%s has no class labels: no domain classifier, so no classifier-based quality metrics "
            "(set data.labels, or metrics.features=inception)",
            manifest["dataset"],
        )
        report["classifier_accuracy"] = None
        write_json(folder / REPORT, report)
        return report
    steps_per_epoch = -(-manifest["splits"]["train"]["count"] // settings.batch_size)
    report["epochs"] = training_epochs(settings, steps_per_epoch)
    log.info(
        "training the domain classifier for %s (%d classes, %d epochs), cached in %s",
        manifest["dataset"],
        report["num_classes"],
        report["epochs"],
        folder,
    )
    # Keras' own seeding, not set_global_seed: this stage builds no tensor-seeded shuffle, and
    # TF global seed 0 (metrics.classifier.seed's default) is what every classifier behind
    # the scores in docs/results.md was trained with.
    keras.utils.set_random_seed(settings.seed)
    with stop_signals as stop:
        at_signal = StopAtSignal(
            stop, f"stopped while training the domain classifier ({folder} is not kept); rerun the same command"
        )
        classifier = build_classifier(tuple(manifest["image_shape"]), report["num_classes"], settings)
        classifier.compile(
            optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        stop.check(at_signal.consequence)
        classifier.fit(
            _labelled(prepared, manifest, "train", settings.batch_size, settings.seed),
            epochs=report["epochs"],
            steps_per_epoch=steps_per_epoch,
            shuffle=False,  # the dataset shuffles itself
            verbose=2,
            callbacks=[at_signal],
        )
        _, accuracy = classifier.evaluate(_labelled(prepared, manifest, "test", 512), verbose=0, callbacks=[at_signal])
    classifier.save(folder / MODEL)
    report["classifier_accuracy"] = float(accuracy)
    write_json(folder / REPORT, report)  # last: a folder with a report is complete
    log.info("domain classifier test accuracy: %.4f", accuracy)
    return report


def train_classifier(config: Config) -> dict:
    """The stage: (re)train the classifier of ``config.data`` unless the cached one is current."""
    prepared, manifest = prepared_dataset(config.data, config.paths)
    folder = _folder(config.paths.classifier_dir, manifest)
    with locked(folder, wait=True):
        return _current_report(config.metrics.classifier, prepared, manifest, folder)


def _folder(classifier_dir: str | Path, manifest: dict) -> Path:
    """Where the classifier of the prepared dataset ``manifest`` describes is kept."""
    return Path(classifier_dir) / manifest["dataset"]


def _current_report(settings: ClassifierConfig, prepared: Path, manifest: dict, folder: Path) -> dict:
    """The cached report if current, else the one of a classifier trained now. Callers hold
    the folder's lock: parallel sweep jobs would otherwise all train it and read each
    other's half-written model."""
    return _cached_report(settings, prepared, folder) or _train(settings, prepared, manifest, folder)


def _cached_report(settings: ClassifierConfig, prepared: Path, folder: Path) -> dict | None:
    try:
        report = json.loads((folder / REPORT).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return report if report.get("identity") == _identity(settings, prepared) else None


def classifier_for(
    settings: ClassifierConfig, classifier_dir: str | Path, prepared: Path, manifest: dict
) -> tuple[keras.Model, float] | None:
    """(features-and-probabilities network, test accuracy) of the prepared data's classifier
    in ``classifier_dir``, training it first if needed; None for data without class labels."""
    folder = _folder(classifier_dir, manifest)
    with locked(folder, wait=True):
        report = _current_report(settings, prepared, manifest, folder)
        if report["classifier_accuracy"] is None:
            return None
        return with_features(keras.models.load_model(folder / MODEL)), report["classifier_accuracy"]
