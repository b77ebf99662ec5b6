"""How the training process runs: its devices, threads, distribution strategy and global
seeds (its precision: ``dcgan.precision``)."""

from __future__ import annotations

import keras
import tensorflow as tf

from dcgan.errors import UserError
from dcgan.multi_worker import Cluster, connect

MAX_TF_SEED = 2**31 - 1  # TensorFlow reduces seeds modulo this


def set_global_seed(seed: int) -> None:
    """Python's, NumPy's and TensorFlow's global seeds, as ``keras.utils.set_random_seed``.

    A TensorFlow global seed of 0 becomes ``MAX_TF_SEED - 1``: with 0, a ``tf.data`` shuffle
    seeded by a tensor (the training pipeline's per-epoch order) fails to build, because
    TensorFlow compares the seed pair with (0, 0) in Python (tensorflow/tensorflow#17284).
    """
    keras.utils.set_random_seed(seed)
    if seed % MAX_TF_SEED == 0:
        tf.random.set_seed(MAX_TF_SEED - 1)


def split_cpu(devices: int) -> None:
    """Present the CPU as ``devices`` logical devices, so the multi-device (mirrored) code
    path runs, and is tested, on a machine without GPUs. Must precede any TensorFlow op."""
    if devices == 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    except RuntimeError:
        raise UserError(
            "config key train.cpu_devices: TensorFlow was already initialised in this process; "
            "run the train stage on its own (prepare first)"
        ) from None


def limit_threads(threads: int | None) -> None:
    """Run TensorFlow's ops on ``threads`` threads (None: TensorFlow's default, all cores),
    so parallel sweep jobs share the cores instead of fighting over them. Must precede any
    TensorFlow op."""
    if threads is None:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        if tf.config.threading.get_intra_op_parallelism_threads() != threads:
            raise UserError(
                "config key train.threads: TensorFlow was already initialised in this process with "
                f"{tf.config.threading.get_intra_op_parallelism_threads()} threads"
            ) from None


def distribution(strategy: str, cluster: Cluster | None = None, timeout: float = 0.0) -> tf.distribute.Strategy:
    """``default``: one device. ``mirrored``: data-parallel over all GPUs or, without any,
    over the logical CPU devices (``train.cpu_devices``). ``multi_worker``: over the
    processes of ``cluster``, once all have answered (within ``timeout`` seconds). A global
    batch is split between the replicas."""
    if strategy == "default":
        return tf.distribute.get_strategy()
    if strategy == "multi_worker":
        return connect(cluster, timeout)
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([device.name for device in devices])
