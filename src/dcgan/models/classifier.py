"""The domain classifier CNN whose penultimate layer is the sample-quality feature space.

Inception features suit ImageNet photos, not 28px digits (TF-GAN scores MNIST with an
MNIST classifier), so each dataset gets its own small VGG-style network trained on its
labelled training split.
"""

from __future__ import annotations

import keras
from keras import layers

from dcgan.config import ClassifierConfig

FEATURES = "features"  # name of the penultimate layer


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
