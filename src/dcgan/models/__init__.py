"""Architectures: each module only builds a generator and a discriminator for a config."""

from __future__ import annotations

from types import ModuleType

import keras

from dcgan.config import ModelConfig
from dcgan.errors import UserError
from dcgan.models import dcgan_mnist

ARCHITECTURES: dict[str, ModuleType] = {"dcgan_mnist": dcgan_mnist}


def build(model: ModelConfig, image_shape: tuple[int, int, int]) -> tuple[keras.Model, keras.Model]:
    """Build (generator, discriminator) for ``model.name``, checked against the data's image shape."""
    if model.name not in ARCHITECTURES:
        raise UserError(f"config key model.name: unknown architecture {model.name!r} (choose from {', '.join(ARCHITECTURES)})")
    architecture = ARCHITECTURES[model.name]
    if tuple(image_shape) != architecture.IMAGE_SHAPE:
        raise UserError(
            f"config key data.image_size: model {model.name} makes {architecture.IMAGE_SHAPE} images "
            f"but the prepared data is {tuple(image_shape)}"
        )
    return architecture.build_generator(model), architecture.build_discriminator(model)
