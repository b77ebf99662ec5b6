"""Reproducible DCGAN training with TensorFlow/Keras, Hydra, DVC and MLflow."""

import os

# Before TensorFlow is first imported: keep its C++ start-up chatter out of user logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
