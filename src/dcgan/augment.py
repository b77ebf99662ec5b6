"""Differentiable augmentation of the discriminator's inputs (DiffAugment: Zhao et al. 2020,
"Differentiable Augmentation for Data-Efficient GAN Training").

The same transformations, each image with its own random parameters, are applied to real
and generated images before D sees them, and G's gradients flow back through them: D
cannot memorise a small training set, and G is not taught to produce augmented images
(which augmenting only the real data would do). Images are in D's input range, [-1, 1].
"""

from __future__ import annotations

import keras
import tensorflow as tf

TRANSLATION = 1 / 8  # shifts of up to this share of the side, zero-filled (the paper's ratio)
CUTOUT = 1 / 2  # side of the zeroed square, as a share of the image side (the paper's ratio)


def augment(images: tf.Tensor, policy: tuple[str, ...], seed: keras.random.SeedGenerator) -> tf.Tensor:
    """``images`` (N, H, W, C) with the augmentations of ``policy`` applied in its order."""
    for name in policy:
        images = _OPS[name](images, seed)
    return images


def _uniform(images: tf.Tensor, seed: keras.random.SeedGenerator, low: float, high: float) -> tf.Tensor:
    """One draw per image, shaped to broadcast over it."""
    return keras.random.uniform((tf.shape(images)[0], 1, 1, 1), low, high, dtype=images.dtype, seed=seed)


def _color(images: tf.Tensor, seed: keras.random.SeedGenerator) -> tf.Tensor:
    """Brightness (+U(-0.5, 0.5)), saturation (x U(0, 2) around the pixel's channel mean; a
    no-op on one channel) and contrast (x U(0.5, 1.5) around the image mean)."""
    images = images + _uniform(images, seed, -0.5, 0.5)
    channel_mean = tf.reduce_mean(images, axis=3, keepdims=True)
    images = (images - channel_mean) * _uniform(images, seed, 0.0, 2.0) + channel_mean
    image_mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    return (images - image_mean) * _uniform(images, seed, 0.5, 1.5) + image_mean


def _pixels(side: tf.Tensor, share: float) -> tf.Tensor:
    """``share`` of ``side`` pixels, rounded."""
    return tf.cast(tf.cast(side, "float32") * share + 0.5, "int32")


def _shift_matrices(size: tf.Tensor, offsets: tf.Tensor) -> tf.Tensor:
    """(N, size, size): row i of image n picks source index i - offsets[n]; an index outside
    the image gives an all-zero row (``tf.one_hot``), so shifted-in pixels are 0."""
    source = tf.range(size)[None, :] - offsets[:, None]
    return tf.one_hot(source, size)


def _integer_offsets(images: tf.Tensor, seed: keras.random.SeedGenerator, low: tf.Tensor, high: tf.Tensor) -> tf.Tensor:
    """One integer per image in [low, high)."""
    return keras.random.randint((tf.shape(images)[0],), low, high, seed=seed)


def _translation(images: tf.Tensor, seed: keras.random.SeedGenerator) -> tf.Tensor:
    """Shift each image by up to 1/8 of its side in both directions, filling with zeros. As
    products with one-hot shift matrices, so exact and differentiable."""
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    max_dy, max_dx = _pixels(height, TRANSLATION), _pixels(width, TRANSLATION)
    rows = _shift_matrices(height, _integer_offsets(images, seed, -max_dy, max_dy + 1))
    cols = _shift_matrices(width, _integer_offsets(images, seed, -max_dx, max_dx + 1))
    return tf.einsum("nyi,nijc,nxj->nyxc", tf.cast(rows, images.dtype), images, tf.cast(cols, images.dtype))


def _within(offset: tf.Tensor, half: tf.Tensor) -> tf.Tensor:
    """-half <= offset < half: 2 * half pixels."""
    return tf.logical_and(offset >= -half, offset < half)


def _cutout(images: tf.Tensor, seed: keras.random.SeedGenerator) -> tf.Tensor:
    """Zero a square of half the image's side at a random centre (clipped at the borders)."""
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    half_h, half_w = _pixels(height, CUTOUT / 2), _pixels(width, CUTOUT / 2)
    centre_y = _integer_offsets(images, seed, 0, height)[:, None]
    centre_x = _integer_offsets(images, seed, 0, width)[:, None]
    inside_y = _within(tf.range(height)[None, :] - centre_y, half_h)  # (N, H)
    inside_x = _within(tf.range(width)[None, :] - centre_x, half_w)  # (N, W)
    cut = tf.logical_and(inside_y[:, :, None], inside_x[:, None, :])
    return images * tf.cast(tf.logical_not(cut), images.dtype)[:, :, :, None]


_OPS = {  # the names of dcgan.config.AUGMENTATIONS
    "color": _color,
    "translation": _translation,
    "cutout": _cutout,
}
