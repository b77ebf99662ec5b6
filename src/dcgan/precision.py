"""Numeric precision of training: ``train.precision`` and what ``auto`` picks on this machine.

``auto`` decides by measurement, not by CPU flags: a CPU that has bfloat16 instructions
may still run bfloat16 convolutions slower than float32 (AVX-512 BF16 without AMX), while
one with AMX runs them about twice as fast. The first ``auto`` run on a machine times a
short DCGAN-shaped training step in each candidate precision and caches the result per
device and TensorFlow version in ``$DCGAN_CACHE_DIR`` (default ``~/.cache/dcgan``); later
runs read the cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import tensorflow as tf

from dcgan.files import cache_dir, write_json

log = logging.getLogger(__name__)

MARGIN = 1.05  # a mixed precision must beat float32 by this factor: fp32 is the safer numerics
PROBE_BATCH = 64
PROBE_STEPS = 8


@dataclass(frozen=True)
class Precision:
    policy: str  # fp32 | mixed_bfloat16 | mixed_float16
    requested: str  # train.precision as set
    images_per_sec: dict[str, float] = field(default_factory=dict)  # auto: the probe's figures per candidate
    source: str = "set"  # set | measured | cache

    def describe(self) -> str:
        if self.requested != "auto":
            return self.policy
        figures = ", ".join(f"{name} {rate:.0f} img/s" for name, rate in self.images_per_sec.items())
        return f"{self.policy} (auto, {self.source}: {figures or 'the only candidate on this device'})"


def cache_file() -> Path:
    return cache_dir() / "precision.json"


def _cpu_flags() -> tuple[str, set[str]]:
    """The CPU's model name and feature flags (Linux), else the platform's description."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), set()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    return fields.get("model name", platform.machine()), set(fields.get("flags", "").split())


def machine_key() -> str:
    """What the decision depends on: the device (GPU name, or CPU model and flags) and TensorFlow."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        device = "GPU " + tf.config.experimental.get_device_details(gpus[0]).get("device_name", "unknown")
    else:
        model, flags = _cpu_flags()
        device = f"CPU {model} flags:{hashlib.sha256(' '.join(sorted(flags)).encode()).hexdigest()[:12]}"
    return f"{device} | tensorflow {tf.__version__}"


def candidates() -> list[str]:
    """The precisions worth timing here: bfloat16 only where the hardware has it."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        major = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0))[0]
        return ["fp32", "mixed_float16"] + (["mixed_bfloat16"] if major >= 8 else [])
    flags = _cpu_flags()[1]
    return ["fp32"] + (["mixed_bfloat16"] if {"avx512_bf16", "amx_bf16"} & flags else [])


def probe(policy: str) -> float:
    """Images/s of a DCGAN-shaped training step (a 28x28 generator and discriminator,
    forward and backward for both) under ``policy``, after a warm-up. Its layers carry the
    policy themselves: the global policy and random state are left alone."""
    dtype = "float32" if policy == "fp32" else policy
    init = keras.initializers.RandomNormal(stddev=0.02, seed=0)
    generator = keras.Sequential(
        [
            keras.Input((100,)),
            keras.layers.Dense(7 * 7 * 128, use_bias=False, kernel_initializer=init, dtype=dtype),
            keras.layers.Reshape((7, 7, 128), dtype=dtype),
            keras.layers.Conv2DTranspose(64, 5, strides=2, padding="same", kernel_initializer=init, dtype=dtype),
            keras.layers.LeakyReLU(dtype=dtype),
            keras.layers.Conv2DTranspose(
                1, 5, strides=2, padding="same", activation="tanh", kernel_initializer=init, dtype=dtype
            ),
        ]
    )
    discriminator = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(64, 5, strides=2, padding="same", kernel_initializer=init, dtype=dtype),
            keras.layers.LeakyReLU(dtype=dtype),
            keras.layers.Conv2D(128, 5, strides=2, padding="same", kernel_initializer=init, dtype=dtype),
            keras.layers.LeakyReLU(dtype=dtype),
            keras.layers.Flatten(dtype=dtype),
            keras.layers.Dense(1, kernel_initializer=init, dtype=dtype),
        ]
    )
    noise = tf.random.stateless_normal((PROBE_BATCH, 100), seed=(0, 0))
    real = tf.random.stateless_uniform((PROBE_BATCH, 28, 28, 1), seed=(0, 1), minval=-1.0, maxval=1.0)
    variables = generator.trainable_variables + discriminator.trainable_variables

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            fake = generator(noise, training=True)
            scores = tf.cast(discriminator(tf.concat([real, tf.cast(fake, real.dtype)], 0), training=True), tf.float32)
            loss = tf.reduce_mean(tf.nn.softplus(scores))
        for variable, gradient in zip(variables, tape.gradient(loss, variables)):
            variable.assign_sub(1e-6 * tf.cast(gradient, variable.dtype))
        return loss

    for _ in range(2):  # tracing and oneDNN's first-call kernel selection
        step().numpy()
    started = time.perf_counter()
    for _ in range(PROBE_STEPS):
        step()
    step().numpy()
    return (PROBE_STEPS + 1) * PROBE_BATCH / (time.perf_counter() - started)


def decide(images_per_sec: dict[str, float]) -> str:
    """The fastest candidate; a mixed precision only if it beats fp32 by ``MARGIN``."""
    fastest = max(images_per_sec, key=images_per_sec.get)
    if fastest != "fp32" and "fp32" in images_per_sec and images_per_sec[fastest] < MARGIN * images_per_sec["fp32"]:
        return "fp32"
    return fastest


@functools.cache
def resolve_precision(requested: str) -> Precision:
    """``train.precision`` as a policy; ``auto`` from the cache, or measured once and cached."""
    if requested != "auto":
        return Precision(requested, requested)
    key, path = machine_key(), cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    entry = cached.get(key) if isinstance(cached, dict) else None
    if isinstance(entry, dict) and entry.get("choice") and isinstance(entry.get("images_per_sec"), dict):
        return Precision(entry["choice"], requested, entry["images_per_sec"], "cache")
    options = candidates()
    figures = {name: round(probe(name), 1) for name in options} if len(options) > 1 else {}
    choice = decide(figures) if figures else options[0]
    try:
        write_json(
            path, {**(cached if isinstance(cached, dict) else {}), key: {"choice": choice, "images_per_sec": figures}}
        )
    except OSError as exc:  # an unwritable cache costs a probe per run, nothing more
        log.warning("precision: cannot write the cache %s (%s)", path, exc.strerror)
    return Precision(choice, requested, figures, "measured")


def set_precision(requested: str) -> Precision:
    """Set Keras' global dtype policy (before the networks are built); returns the choice."""
    precision = resolve_precision(requested)
    keras.mixed_precision.set_dtype_policy("float32" if precision.policy == "fp32" else precision.policy)
    log.info("precision: %s", precision.describe())
    return precision
