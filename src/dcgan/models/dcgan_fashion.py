"""The Keras-callback style DCGAN many users know from Fashion-MNIST examples (28x28, 1 or 3 channels).

Discriminator: four Conv2D blocks (BatchNorm, LeakyReLU, Dropout), GlobalMaxPooling2D and a
sigmoid Dense. Generator: Dense from the noise, LeakyReLU, Reshape, two Conv2DTranspose
blocks (LeakyReLU, BatchNorm) and a Conv2D output layer. Trained with noisy labels
(``train.label_noise``).
"""

from __future__ import annotations

import keras
from keras import layers

from dcgan.config import DropoutModelConfig
from dcgan.models.layers import FastDropout, FusedBatchNormalization

Settings = DropoutModelConfig  # the keys this architecture reads


def check(image_shape: tuple[int, int, int]) -> str | None:
    size, width, _ = image_shape
    return None if size == width and size % 4 == 0 else "needs square images whose side is a multiple of 4"


def build_generator(model: Settings, image_shape: tuple[int, int, int], output_activation: str) -> keras.Model:
    size, _, channels = image_shape
    quarter = size // 4
    slope = model.leaky_slope
    return keras.Sequential(
        [
            keras.Input((model.latent_dim,)),
            layers.Dense(quarter * quarter * model.filters * 2),
            layers.LeakyReLU(slope),
            layers.Reshape((quarter, quarter, model.filters * 2)),
            layers.Conv2DTranspose(model.filters * 2, 4, strides=2, padding="same"),
            layers.LeakyReLU(slope),
            FusedBatchNormalization(),
            layers.Conv2DTranspose(model.filters * 2, 4, strides=2, padding="same"),
            layers.LeakyReLU(slope),
            FusedBatchNormalization(),
            layers.Conv2D(channels, 7, padding="same", activation=output_activation, dtype="float32"),
        ],
        name="generator",
    )


def build_discriminator(model: Settings, image_shape: tuple[int, int, int]) -> keras.Model:
    stack = [keras.Input(image_shape)]
    for width, stride in ((model.filters, 2), (model.filters * 2, 2), (model.filters * 2, 1), (model.filters * 4, 1)):
        stack += [
            layers.Conv2D(width, 3, strides=stride, padding="same"),
            FusedBatchNormalization(),
            layers.LeakyReLU(model.leaky_slope),
            FastDropout(model.dropout),
        ]
    stack += [layers.GlobalMaxPooling2D(), layers.Dense(1, activation=model.d_activation(), dtype="float32")]
    return keras.Sequential(stack, name="discriminator")
