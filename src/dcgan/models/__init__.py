"""Architectures: each module only builds a generator and a discriminator for a config.

A module provides ``check(image_shape)`` (None, or why it cannot make that shape),
``build_generator(model, image_shape, output_activation)`` and
``build_discriminator(model, image_shape)``.
"""

from __future__ import annotations

from types import ModuleType

import keras

from dcgan.config import ModelConfig
from dcgan.errors import UserError
from dcgan.models import dcgan, dcgan_fashion, dcgan_mnist, dcgan_rgb128

ARCHITECTURES: dict[str, ModuleType] = {
    "dcgan_mnist": dcgan_mnist,
    "dcgan_fashion": dcgan_fashion,
    "dcgan_rgb128": dcgan_rgb128,
    "dcgan": dcgan,
}


def architecture_for(model: ModelConfig, image_shape: tuple[int, int, int]) -> ModuleType:
    """The architecture module of ``model.name``; a UserError if there is none or it cannot
    make images of ``image_shape`` (train calls this before any data work)."""
    if model.name not in ARCHITECTURES:
        raise UserError(
            f"config key model.name: unknown architecture {model.name!r} (choose from {', '.join(ARCHITECTURES)})"
        )
    architecture = ARCHITECTURES[model.name]
    problem = architecture.check(tuple(image_shape))
    if problem:
        raise UserError(
            f"config key data.image_size: model {model.name} {problem}, but the data is {tuple(image_shape)}"
        )
    return architecture


def build(
    model: ModelConfig, image_shape: tuple[int, int, int], pixel_range: list[float]
) -> tuple[keras.Model, keras.Model]:
    """Build (generator, discriminator) for ``model.name`` and the prepared data's shape and
    range: tanh output for [-1, 1] pixels, sigmoid for [0, 1]."""
    architecture = architecture_for(model, image_shape)
    output_activation = "tanh" if pixel_range[0] < 0 else "sigmoid"
    return (
        architecture.build_generator(model, tuple(image_shape), output_activation),
        architecture.build_discriminator(model, tuple(image_shape)),
    )
