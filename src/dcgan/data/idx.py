"""Parse IDX files (the MNIST/Fashion-MNIST format) with full structural checks.

Format: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then
one big-endian uint32 per dimension, then the data. See http://yann.lecun.com/exdb/mnist/.
"""

from __future__ import annotations

import struct

import numpy as np

from dcgan.errors import UserError

UNSIGNED_BYTE = 0x08


def parse_idx(content: bytes, name: str, ndim: int) -> np.ndarray:
    """Decode an unsigned-byte IDX array of ``ndim`` dimensions; ``name`` is used in errors."""
    if len(content) < 4:
        raise UserError(f"{name}: truncated IDX file ({len(content)} bytes, no header)")
    zero, dtype_code, dims = struct.unpack(">HBB", content[:4])
    if zero != 0 or dtype_code != UNSIGNED_BYTE or dims != ndim:
        raise UserError(
            f"{name}: wrong IDX magic number 0x{int.from_bytes(content[:4], 'big'):08x} "
            f"(expected 0x{UNSIGNED_BYTE << 8 | ndim:08x}: unsigned bytes, {ndim} dimensions)"
        )
    header = 4 + 4 * ndim
    if len(content) < header:
        raise UserError(f"{name}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", content[4:header])
    expected = header + int(np.prod(shape))
    if len(content) != expected:
        kind = "truncated" if len(content) < expected else "oversized"
        raise UserError(f"{name}: {kind} IDX file: {len(content)} bytes, shape {shape} needs {expected}")
    return np.frombuffer(content, dtype=np.uint8, offset=header).reshape(shape)


def parse_pair(images: bytes, labels: bytes, images_name: str, labels_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode an images file and its labels file and check they describe the same samples."""
    image_array = parse_idx(images, images_name, 3)
    label_array = parse_idx(labels, labels_name, 1)
    if image_array.shape[0] != label_array.shape[0]:
        raise UserError(
            f"{images_name}: {image_array.shape[0]} images but {labels_name} has {label_array.shape[0]} labels"
        )
    return image_array, label_array
