"""Numeric precision for training, resolved for the hardware at hand."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import tensorflow as tf

log = logging.getLogger(__name__)

def _cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX: the CPU multiplies bfloat16 natively (about 1.8x fp32 matmul here)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str) -> str:
    """``auto``: bfloat16 where the hardware computes it natively (Ampere+ GPUs, BF16 CPUs),
    float16 with loss scaling on older GPUs, float32 otherwise."""
    if precision != "auto":
        return precision
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        major = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0))[0]
        return "mixed_bfloat16" if major >= 8 else "mixed_float16"
    return "mixed_bfloat16" if _cpu_has_bf16() else "fp32"


def set_precision(precision: str) -> str:
    """Set Keras' global dtype policy (before the networks are built); returns the policy used."""
    resolved = resolve_precision(precision)
    keras.mixed_precision.set_dtype_policy("float32" if resolved == "fp32" else resolved)
    log.info("precision: %s%s", resolved, " (auto)" if precision == "auto" else "")
    return resolved
