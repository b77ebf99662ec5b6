"""DiffAugment: shapes, ranges, what each transformation does, both halves of D's input
augmented with gradients flowing to G, and determinism under a seed."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY, compose_config

from dcgan.augment import augment
from dcgan.commands.train import build_gan
from dcgan.config import AUGMENTATIONS
from dcgan.errors import UserError
from dcgan.gan import GAN


def _images(shape=(8, 28, 28, 1), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def _augmented(images, policy, seed=0) -> np.ndarray:
    return augment(tf.constant(images), tuple(policy), keras.random.SeedGenerator(seed)).numpy()


@pytest.mark.parametrize("shape", [(8, 28, 28, 1), (4, 64, 64, 3)])
@pytest.mark.parametrize("policy", [[name] for name in AUGMENTATIONS] + [list(AUGMENTATIONS)])
def test_every_policy_keeps_shape_and_dtype_and_stays_bounded(shape, policy):
    images = _images(shape)
    out = _augmented(images, policy)
    assert out.shape == shape and out.dtype == np.float32
    # Brightness +-0.5, then x2 saturation and x1.5 contrast about means inside the range.
    assert np.isfinite(out).all() and np.abs(out).max() <= 4.5
    assert not np.array_equal(out, images)


def test_translation_shifts_each_image_by_at_most_an_eighth_filling_zeros():
    images = _images()
    out = _augmented(images, ["translation"])
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))  # 28 / 8 = 3.5, rounded: up to 4 px
    shifts = set()
    for image, shifted in zip(padded, out):
        matches = [
            (dy, dx)
            for dy in range(-4, 5)
            for dx in range(-4, 5)
            if np.array_equal(shifted, image[4 - dy : 32 - dy, 4 - dx : 32 - dx])
        ]
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) > 1  # each image its own shift


def test_cutout_zeroes_one_square_of_half_the_side_clipped_at_the_borders():
    out = _augmented(np.ones((16, 28, 28, 1), np.float32), ["cutout"])
    for image in out[..., 0]:
        rows, cols = np.nonzero(image == 0)
        assert set(np.unique(image)) <= {0.0, 1.0}
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert len(rows) == height * width  # one filled rectangle
        assert height <= 14 and width <= 14
        assert height == 14 or rows.min() == 0 or rows.max() == 27  # smaller only where clipped
        assert width == 14 or cols.min() == 0 or cols.max() == 27


def test_color_is_one_affine_map_per_grey_image():
    images = _images()
    out = _augmented(images, ["color"])
    for image, changed in zip(images.reshape(len(images), -1), out.reshape(len(out), -1)):
        scale, offset = np.polyfit(image, changed, 1)
        np.testing.assert_allclose(scale * image + offset, changed, atol=1e-5)
        assert 0.0 <= scale <= 1.5


def test_the_same_seed_gives_the_same_augmentation_and_another_seed_another():
    images = _images()
    policy = list(AUGMENTATIONS)
    np.testing.assert_array_equal(_augmented(images, policy, seed=7), _augmented(images, policy, seed=7))
    assert not np.array_equal(_augmented(images, policy, seed=7), _augmented(images, policy, seed=8))


def test_d_sees_both_halves_augmented_and_g_learns_through_the_augmentation():
    config = compose_config(
        [*TINY, "model=dcgan_mnist", "train.precision=fp32", "train.augment=[color,translation,cutout]"]
    )
    gan = build_gan(config, {"image_shape": [28, 28, 1], "normalization": {"range": [-1.0, 1.0]}}, total_steps=10)
    plain = GAN(gan.generator, gan.discriminator, config.model.latent_dim, seed=0)
    real = tf.constant(_images((4, 28, 28, 1)))
    noise = tf.constant(np.random.default_rng(1).standard_normal((4, config.model.latent_dim)).astype(np.float32))
    with tf.GradientTape() as tape:
        fake = gan.generator(noise, training=False)
        real_out, fake_out = gan._discriminate(real, fake)
        loss = tf.reduce_sum(fake_out)
    plain_real, plain_fake = plain._discriminate(real, fake)
    assert not np.allclose(real_out, plain_real) and not np.allclose(fake_out, plain_fake)
    grads = tape.gradient(loss, gan.generator.trainable_weights)
    assert all(grad is not None and np.abs(grad.numpy()).sum() > 0 for grad in grads)
    history = gan.fit(
        tf.data.Dataset.from_tensor_slices(_images((8, 28, 28, 1))).batch(4), epochs=1, shuffle=False, verbose=0
    )  # traced
    assert np.isfinite(history.history["d_loss"]).all()


def test_an_unknown_or_repeated_augmentation_is_a_config_error():
    with pytest.raises(
        UserError, match="train.augment: unknown augmentation 'blur': choose from color, translation, cutout"
    ):
        compose_config([*TINY, "train.augment=[color,blur]"])
    with pytest.raises(UserError, match="train.augment: lists an augmentation twice"):
        compose_config([*TINY, "train.augment=[cutout,cutout]"])
    with pytest.raises(
        UserError, match=r"^config key train.augment: must be a list such as \[a,b\] \(or \[\] for none\), got 'color'$"
    ):
        compose_config([*TINY, "train.augment=color"])
