"""The classic Keras "GAN faces" model, scaled to 128x128x3 (Chollet, Deep Learning with Python, 8.5).

Generator: latent (32) -> Dense 16x16x128 -> Conv2D, then three Conv2DTranspose
upsamplings to 128x128 with widths halving, Conv2D refinements and a 7x7 tanh output.
Discriminator: strided Conv2D + LeakyReLU, Flatten, Dropout(0.4), sigmoid Dense.
"""

from __future__ import annotations

import keras
from keras import layers

from dcgan.config import DropoutModelConfig
from dcgan.models.layers import FastDropout

Settings = DropoutModelConfig  # the keys this architecture reads
START = 16


def check(image_shape: tuple[int, int, int]) -> str | None:
    return None if tuple(image_shape[:2]) == (128, 128) else "makes 128x128 images only"


def build_generator(model: Settings, image_shape: tuple[int, int, int], output_activation: str) -> keras.Model:
    channels = image_shape[2]
    slope = model.leaky_slope
    width = model.filters * 4
    stack = [
        keras.Input((model.latent_dim,)),
        layers.Dense(START * START * 128),
        layers.LeakyReLU(slope),
        layers.Reshape((START, START, 128)),
        layers.Conv2D(width, 5, padding="same"),
        layers.LeakyReLU(slope),
    ]
    for _ in range(3):  # 16 -> 32 -> 64 -> 128
        width //= 2
        stack += [layers.Conv2DTranspose(width, 4, strides=2, padding="same"), layers.LeakyReLU(slope)]
    stack += [
        layers.Conv2D(width, 5, padding="same"),
        layers.LeakyReLU(slope),
        layers.Conv2D(channels, 7, padding="same", activation=output_activation, dtype="float32"),
    ]
    return keras.Sequential(stack, name="generator")


def build_discriminator(model: Settings, image_shape: tuple[int, int, int]) -> keras.Model:
    slope = model.leaky_slope
    stack = [keras.Input(image_shape), layers.Conv2D(model.filters, 3), layers.LeakyReLU(slope)]
    for width in (model.filters, model.filters * 2, model.filters * 2, model.filters * 4):  # 126 -> 8
        stack += [layers.Conv2D(width, 4, strides=2), layers.LeakyReLU(slope)]
    stack += [
        layers.Flatten(),
        FastDropout(model.dropout),
        layers.Dense(1, activation=model.d_activation(), dtype="float32"),
    ]
    return keras.Sequential(stack, name="discriminator")
