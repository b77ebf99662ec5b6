"""Reproducible DCGAN training with TensorFlow/Keras, Hydra, DVC and MLflow."""

from dcgan.native_log import silence_tensorflow_import

silence_tensorflow_import()
