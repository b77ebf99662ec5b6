"""The domain classifier per prepared dataset (the classifier stage, and the quality
metrics' "train it if missing"): the feature extractor of
the quality metrics, cached in ``paths.classifier_dir/<data.name>`` and retrained only
when the prepared data or ``metrics.classifier`` settings change."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import keras
import tensorflow as tf

from dcgan.config import ClassifierConfig, Config, flatten, to_dict
from dcgan.data.prepare import prepared_dataset
from dcgan.data.tfrecords import manifest_sha256, normalize, read_split
from dcgan.files import locked, write_json
from dcgan.models.classifier import build_classifier, with_features
from dcgan.signals import StopAtSignal, stop_signals

log = logging.getLogger(__name__)

MODEL = "classifier.keras"
REPORT = "classifier.json"


def _identity(config: Config, prepared: Path) -> dict:
    return {
        "data.manifest_sha256": manifest_sha256(prepared),
        **flatten({"metrics.classifier": to_dict(config)["metrics"]["classifier"]}),
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


def _train(config: Config, prepared: Path, manifest: dict, folder: Path) -> dict:
    settings = config.metrics.classifier
    report = {"identity": _identity(config, prepared), "num_classes": manifest.get("num_classes", 0)}
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if report["num_classes"] < 2:
        log.warning(
            "%s has no class labels: no domain classifier, so no classifier-based quality metrics "
            "(set data.labels, or metrics.features=inception)",
            config.data.name,
        )
        report["classifier_accuracy"] = None
        write_json(folder / REPORT, report)
        return report
    steps_per_epoch = -(-manifest["splits"]["train"]["count"] // settings.batch_size)
    report["epochs"] = training_epochs(settings, steps_per_epoch)
    log.info(
        "training the domain classifier for %s (%d classes, %d epochs), cached in %s",
        config.data.name,
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
    prepared, manifest = prepared_dataset(config)
    folder = Path(config.paths.classifier_dir) / config.data.name
    with locked(folder, wait=True):
        return _current_report(config, prepared, manifest, folder)


def _current_report(config: Config, prepared: Path, manifest: dict, folder: Path) -> dict:
    """The cached report if current, else the one of a classifier trained now. Callers hold
    the folder's lock: parallel sweep jobs would otherwise all train it and read each
    other's half-written model."""
    return _cached_report(config, prepared, folder) or _train(config, prepared, manifest, folder)


def _cached_report(config: Config, prepared: Path, folder: Path) -> dict | None:
    try:
        report = json.loads((folder / REPORT).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return report if report.get("identity") == _identity(config, prepared) else None


def classifier_for(config: Config, prepared: Path, manifest: dict) -> tuple[keras.Model, float] | None:
    """(features-and-probabilities network, test accuracy) of the data's classifier,
    training it first if needed; None for data without class labels."""
    folder = Path(config.paths.classifier_dir) / config.data.name
    with locked(folder, wait=True):
        report = _current_report(config, prepared, manifest, folder)
        if report["classifier_accuracy"] is None:
            return None
        return with_features(keras.models.load_model(folder / MODEL)), report["classifier_accuracy"]
