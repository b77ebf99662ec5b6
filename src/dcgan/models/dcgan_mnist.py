"""The TensorFlow DCGAN tutorial's networks for 28x28x1 images (tensorflow.org/tutorials/generative/dcgan)."""

from __future__ import annotations

import keras
from keras import layers

from dcgan.config import ModelConfig

IMAGE_SHAPE = (28, 28, 1)


def build_generator(model: ModelConfig) -> keras.Model:
    """Dense 7x7x256 -> 7x7x128 -> 14x14x64 -> 28x28x1 (tanh): 2,330,944 parameters at latent 100."""
    slope = model.leaky_slope
    return keras.Sequential(
        [
            keras.Input((model.latent_dim,)),
            layers.Dense(7 * 7 * 256, use_bias=False),
            layers.BatchNormalization(),
            layers.LeakyReLU(slope),
            layers.Reshape((7, 7, 256)),
            layers.Conv2DTranspose(128, 5, strides=1, padding="same", use_bias=False),
            layers.BatchNormalization(),
            layers.LeakyReLU(slope),
            layers.Conv2DTranspose(64, 5, strides=2, padding="same", use_bias=False),
            layers.BatchNormalization(),
            layers.LeakyReLU(slope),
            # float32 output keeps the image range exact under mixed precision.
            layers.Conv2DTranspose(1, 5, strides=2, padding="same", use_bias=False, activation="tanh", dtype="float32"),
        ],
        name="generator",
    )


def build_discriminator(model: ModelConfig) -> keras.Model:
    """Two strided 5x5 convolutions with dropout, then one logit: 212,865 parameters."""
    slope = model.leaky_slope
    return keras.Sequential(
        [
            keras.Input(IMAGE_SHAPE),
            layers.Conv2D(64, 5, strides=2, padding="same"),
            layers.LeakyReLU(slope),
            layers.Dropout(model.dropout),
            layers.Conv2D(128, 5, strides=2, padding="same"),
            layers.LeakyReLU(slope),
            layers.Dropout(model.dropout),
            layers.Flatten(),
            layers.Dense(1, dtype="float32"),
        ],
        name="discriminator",
    )
