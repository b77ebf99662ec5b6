"""Reproducible DCGAN training with TensorFlow/Keras, Hydra, DVC and MLflow."""

from dcgan.native_log import import_tensorflow_quietly

import_tensorflow_quietly()
