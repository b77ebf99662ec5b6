"""Architectures: each module of this package that defines ``build_generator`` is one,
named after its module, and holds all of it (docs/layout.md, "A new architecture"):

- ``Settings``: the dataclass of the ``model.*`` keys it reads (dcgan.config.ModelConfig
  and its own), checked when the config is validated;
- ``check(image_shape)``: None, or why it cannot make images of that shape;
- ``build_generator(model, image_shape, output_activation)`` and
  ``build_discriminator(model, image_shape)``.
"""

from __future__ import annotations

import importlib
import pkgutil
import zipfile
from functools import cache
from pathlib import Path
from types import ModuleType

import keras

from dcgan.config import ModelConfig
from dcgan.errors import UserError

RERUN_TRAIN = "run the train stage first (dvc repro train)"


@cache
def architectures() -> dict[str, ModuleType]:
    """The architecture modules of this package by name, found by what they define."""
    modules = (importlib.import_module(f"{__name__}.{info.name}") for info in pkgutil.iter_modules(__path__))
    return {module.__name__.rsplit(".", 1)[1]: module for module in modules if hasattr(module, "build_generator")}


def architecture_for(model: ModelConfig, image_shape: tuple[int, int, int]) -> ModuleType:
    """The architecture module of ``model.name``; a UserError if there is none or it cannot
    make images of ``image_shape`` (train calls this before any data work)."""
    known = architectures()
    if model.name not in known:
        raise UserError(f"config key model.name: unknown architecture {model.name!r} (choose from {', '.join(known)})")
    architecture = known[model.name]
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


def load_trained(path: Path) -> keras.Model:
    """A network the train stage saved; a UserError naming the file if it is missing or damaged."""
    if not path.is_file():
        raise UserError(f"{path}: trained model not found; {RERUN_TRAIN}")
    if not zipfile.is_zipfile(path):  # Keras itself calls a truncated archive "File not found"
        raise UserError(
            f"{path}: not a readable Keras model (truncated or damaged: not a complete .keras archive); "
            "rerun the train stage (dvc repro -f train)"
        )
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras reports a damaged archive as anything from ValueError to KeyError
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise UserError(
            f"{path}: not a readable Keras model ({reason}); rerun the train stage (dvc repro -f train)"
        ) from None
