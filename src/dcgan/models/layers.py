"""Layers shared by the architectures."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers


@keras.saving.register_keras_serializable(package="dcgan")
class FusedBatchNormalization(layers.BatchNormalization):
    """Keras' ``BatchNormalization`` that trains with TensorFlow's fused kernel.

    Keras 2 used the fused kernel by default (``fused=True``); Keras 3 composes batch
    normalisation from separate ops, which took about a third of the tutorial generator's
    step on this CPU (bfloat16: 320 ms vs 230 ms fused, per step of G forward + backward at
    batch 256). Same weights, same math (biased batch variance for normalising and for the
    moving variance), so a trained network converts to the plain Keras layer with
    ``standard_copy``. Inference, and any setup the kernel does not cover, is Keras' own.
    """

    def call(self, inputs, training=None, mask=None):
        rank = len(inputs.shape)
        fusable = (
            training
            and self.trainable
            and mask is None
            and self.center
            and self.scale
            and rank in (2, 4)
            and self.axis in (-1, rank - 1)
        )
        if not fusable:
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        # The kernel is NHWC-only: a (batch, features) input is normalised as 1x1 images.
        images = tf.reshape(inputs, (-1, 1, 1, channels)) if rank == 2 else inputs
        outputs, mean, unbiased_variance = tf.compat.v1.nn.fused_batch_norm(
            images,
            tf.convert_to_tensor(self.gamma),
            tf.convert_to_tensor(self.beta),
            epsilon=self.epsilon,
            is_training=True,
        )[:3]
        count = tf.cast(tf.size(images) // channels, unbiased_variance.dtype)
        variance = unbiased_variance * (count - 1.0) / count
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return tf.reshape(outputs, tf.shape(inputs)) if rank == 2 else outputs


@keras.saving.register_keras_serializable(package="dcgan")
class FastDropout(layers.Dropout):
    """Keras' ``Dropout`` drawing 16 random bits per value instead of 32.

    Generating the random bits (Philox) is most of dropout's cost on CPU, and half the bits
    halve it (measured in docs/speed.md). Each value is kept when its
    16 bits are at least ``round(rate * 65536)``, so the drop probability is ``rate`` to
    within 1/131,072, and kept values are scaled by the inverse of the exact keep probability,
    which keeps every value's expectation. Inference, and noise shapes, are Keras' own.
    """

    def call(self, inputs, training=False):
        threshold = round(self.rate * 2**16)
        if not training or self.noise_shape is not None or not 0 < threshold < 2**16:
            return super().call(inputs, training=training)
        count = tf.size(inputs)
        words = tf.random.stateless_uniform(
            [(count + 1) // 2], seed=self.seed_generator.next(), minval=None, maxval=None, dtype=tf.uint32
        )
        draws = tf.reshape(tf.bitcast(words, tf.uint16), [-1])[:count]
        keep = tf.reshape(draws >= threshold, tf.shape(inputs))
        scale = tf.constant(2**16 / (2**16 - threshold), inputs.dtype)
        return tf.where(keep, inputs * scale, tf.zeros_like(inputs))


# The training-only layers and the Keras layers they stand in for.
PLAIN_LAYER = {FusedBatchNormalization: layers.BatchNormalization, FastDropout: layers.Dropout}


def standard_copy(network: keras.Model) -> keras.Model:
    """A copy of ``network`` with the same weights and plain Keras layers only, so a saved
    or MLflow-logged model loads anywhere Keras does, without this package."""

    def plain(layer: layers.Layer) -> layers.Layer:
        return PLAIN_LAYER.get(type(layer), type(layer)).from_config(layer.get_config())

    copy = keras.models.clone_model(network, clone_function=plain)
    copy.set_weights(network.get_weights())
    return copy
