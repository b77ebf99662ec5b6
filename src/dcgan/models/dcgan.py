"""The DCGAN family of Radford et al. (2016, arXiv:1511.06434) for any power-of-two size.

All-convolutional: fractionally-strided convolutions up and strided convolutions down
(no pooling), BatchNorm in both networks except G's output and D's input layers, ReLU in
G, LeakyReLU in D, tanh (or sigmoid) output, no hidden dense layers. Widths double at
every halving of resolution from ``model.filters``, capped at ``model.max_filters``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
from keras import layers
from omegaconf import MISSING

from dcgan.config import ModelConfig, require
from dcgan.models.layers import FusedBatchNormalization


@dataclass
class Settings(ModelConfig):
    max_filters: int = MISSING  # width cap
    g_activation: str = MISSING  # relu (Radford et al.) or leaky_relu

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.max_filters >= self.filters,
            "model.max_filters",
            f"must be >= model.filters ({self.filters}), got {self.max_filters}",
        )
        require(self.g_activation in ("relu", "leaky_relu"), "model.g_activation", "must be relu or leaky_relu")


KERNEL = 4
BASE = 4  # the generator starts from a 4x4 map


def check(image_shape: tuple[int, int, int]) -> str | None:
    size, width, _ = image_shape
    if size != width or size < 8 or size & (size - 1):
        return "needs square images whose side is a power of two, at least 8"
    return None


def _widths(model: Settings, size: int) -> list[int]:
    """Channel widths at 4x4, 8x8, ..., size/2 x size/2 (generator order)."""
    levels = int(math.log2(size // BASE))
    return [min(model.filters * 2 ** (levels - 1 - i), model.max_filters) for i in range(levels)]


def _activation(model: Settings) -> layers.Layer:
    return layers.ReLU() if model.g_activation == "relu" else layers.LeakyReLU(model.leaky_slope)


def build_generator(model: Settings, image_shape: tuple[int, int, int], output_activation: str) -> keras.Model:
    size, _, channels = image_shape
    widths = _widths(model, size)
    stack = [
        keras.Input((model.latent_dim,)),
        layers.Reshape((1, 1, model.latent_dim)),
        layers.Conv2DTranspose(widths[0], BASE, strides=1, padding="valid", use_bias=False),  # -> 4x4
        FusedBatchNormalization(),
        _activation(model),
    ]
    for width in widths[1:]:
        stack += [
            layers.Conv2DTranspose(width, KERNEL, strides=2, padding="same", use_bias=False),
            FusedBatchNormalization(),
            _activation(model),
        ]
    stack.append(
        layers.Conv2DTranspose(
            channels, KERNEL, strides=2, padding="same", activation=output_activation, dtype="float32"
        )
    )
    return keras.Sequential(stack, name="generator")


def build_discriminator(model: Settings, image_shape: tuple[int, int, int]) -> keras.Model:
    widths = list(reversed(_widths(model, image_shape[0])))
    stack = [keras.Input(image_shape)]
    for i, width in enumerate(widths):
        stack.append(layers.Conv2D(width, KERNEL, strides=2, padding="same", use_bias=i == 0))
        if i > 0:
            stack.append(FusedBatchNormalization())
        stack.append(layers.LeakyReLU(model.leaky_slope))
    stack += [
        layers.Conv2D(
            1, BASE, strides=1, padding="valid", activation=model.d_activation(), dtype="float32"
        ),  # 4x4 -> 1
        layers.Flatten(),
    ]
    return keras.Sequential(stack, name="discriminator")
