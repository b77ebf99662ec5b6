"""Reproducible DCGAN training with TensorFlow/Keras, Hydra, DVC and MLflow."""

import os

# TensorFlow's C++ start-up chatter (oneDNN notices, absl's "before InitializeLog" warning)
# goes to stderr during its import, ahead of any log level setting: import it once here with
# stderr pointed away, so a one-line error stays one line. DCGAN_TF_LOGS=1 shows it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("DCGAN_TF_LOGS", "0") == "0":
    _stderr = os.dup(2)
    _devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(_devnull, 2)
    try:
        import tensorflow  # noqa: F401
    finally:
        os.dup2(_stderr, 2)
        os.close(_stderr)
        os.close(_devnull)
