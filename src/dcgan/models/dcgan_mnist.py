"""The TensorFlow DCGAN tutorial's networks for 28x28x1 images (tensorflow.org/tutorials/generative/dcgan)."""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers
from omegaconf import MISSING

from dcgan.config import DropoutModelConfig, require
from dcgan.models.layers import FastDropout, FusedBatchNormalization


@dataclass
class Settings(DropoutModelConfig):
    """The tutorial's networks with a configurable width of G and depth of D."""

    g_filters: int = MISSING  # G's last hidden width, 2x and 4x before it (64 as in the TF tutorial)
    d_blocks: int = MISSING  # strided convolutions in D (2 as in the TF tutorial)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.g_filters >= 1, "model.g_filters", f"must be at least 1, got {self.g_filters}")
        require(self.d_blocks >= 1, "model.d_blocks", f"must be at least 1, got {self.d_blocks}")


def check(image_shape: tuple[int, int, int]) -> str | None:
    return None if tuple(image_shape) == (28, 28, 1) else "makes 28x28x1 images only"


def build_generator(model: Settings, image_shape: tuple[int, int, int], output_activation: str) -> keras.Model:
    """Dense 7x7x4g -> 7x7x2g -> 14x14xg -> 28x28x1 for g = ``model.g_filters``. As published
    (g = 64): 7x7x256 -> 7x7x128 -> 14x14x64, 2,330,944 parameters at latent 100."""
    slope = model.leaky_slope
    width = model.g_filters
    return keras.Sequential(
        [
            keras.Input((model.latent_dim,)),
            layers.Dense(7 * 7 * width * 4, use_bias=False),
            FusedBatchNormalization(),
            layers.LeakyReLU(slope),
            layers.Reshape((7, 7, width * 4)),
            layers.Conv2DTranspose(width * 2, 5, strides=1, padding="same", use_bias=False),
            FusedBatchNormalization(),
            layers.LeakyReLU(slope),
            layers.Conv2DTranspose(width, 5, strides=2, padding="same", use_bias=False),
            FusedBatchNormalization(),
            layers.LeakyReLU(slope),
            # float32 output keeps the image range exact under mixed precision.
            layers.Conv2DTranspose(
                1, 5, strides=2, padding="same", use_bias=False, activation=output_activation, dtype="float32"
            ),
        ],
        name="generator",
    )


def build_discriminator(model: Settings, image_shape: tuple[int, int, int]) -> keras.Model:
    """``model.d_blocks`` strided 5x5 convolutions of ``model.filters`` doubling widths, each
    with dropout, then one output. As published: 2 blocks of 64 and 128, 212,865 parameters."""
    slope = model.leaky_slope
    stack = [keras.Input(image_shape)]
    for block in range(model.d_blocks):
        stack += [
            layers.Conv2D(model.filters * 2**block, 5, strides=2, padding="same"),
            layers.LeakyReLU(slope),
            FastDropout(model.dropout),
        ]
    stack += [layers.Flatten(), layers.Dense(1, activation=model.d_activation(), dtype="float32")]
    return keras.Sequential(stack, name="discriminator")
