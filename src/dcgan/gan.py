"""The one GAN model: a ``keras.Model`` holding both networks, trained with ``fit``."""

from __future__ import annotations

import keras
import tensorflow as tf

from dcgan.models.layers import standard_copy


class SkipNonFiniteSteps(keras.optimizers.LossScaleOptimizer):
    """Mixed precision's optimizer: an update whose gradients are not all finite is skipped
    and counted in ``skipped_steps``.

    With ``scaling`` (``mixed_float16``) this is Keras' dynamic loss scaling, which keeps
    small float16 gradients from underflowing and halves the scale on each skip. Without it
    (``mixed_bfloat16``, which has float32's range) the scale stays 1 and only the skip is
    kept: on AMX CPUs oneDNN's bfloat16 convolution-filter gradient now and then returns
    inf/NaN from finite inputs (docs/speed.md), and one skipped step absorbs what would
    otherwise turn every weight into NaN.
    """

    def __init__(self, inner_optimizer: keras.optimizers.Optimizer, scaling: bool, **kwargs):
        super().__init__(inner_optimizer, initial_scale=2.0**15 if scaling else 1.0, **kwargs)
        self.scaling = scaling

    def build(self, var_list):
        self.skipped_steps = self.add_variable(shape=(), dtype="int", initializer="zeros", aggregation="none", name="skipped_steps")
        super().build(var_list)

    def _stateful_handle_finite_grads(self, grads, trainable_variables):
        if self.scaling:
            super()._stateful_handle_finite_grads(grads, trainable_variables)
        else:
            self.inner_optimizer.apply(grads, trainable_variables=trainable_variables)

    def _stateful_handle_non_finite_grads(self):
        self.skipped_steps.assign_add(1)
        if self.scaling:
            super()._stateful_handle_non_finite_grads()


class GAN(keras.Model):
    """Generator and discriminator updated together from one forward pass per step.

    As in the TensorFlow DCGAN tutorial, each step draws one noise batch and applies both
    gradient updates from the same forward pass. With ``joint_batch`` the discriminator
    scores real and generated images as one batch, as in the keras-io DCGAN, whose
    BatchNorm discriminator, fed them separately, tells them apart by batch statistics
    alone and overpowers G. Otherwise it scores them in two calls, as the TF tutorial and
    pytorch/examples' dcgan do: G's loss is not backpropagated through D's real half (about
    8% of an fp32 step for the tutorial networks), and Radford et al.'s BatchNorm D learns
    far better from separate batches (measured on 32 px MNIST: FID 139 vs 299 after two
    epochs).

    Logged per epoch: ``d_loss``, ``g_loss``, the discriminator's mean probability on
    real images (``d_real``, D(x)) and on generated ones (``d_fake``, D(G(z))), and under
    mixed precision the updates skipped so far for non-finite gradients (``skipped_steps``,
    both networks together; see ``SkipNonFiniteSteps``). The
    discriminator ends in logits or in a sigmoid, as ``loss_fn.from_logits`` says.
    D's target for real images is ``1 - label_smoothing`` (one-sided label smoothing,
    Salimans et al. 2016, "Improved Techniques for Training GANs"; generated images keep
    0, which keeps D from rewarding G's mistakes). With ``label_noise`` > 0 both targets
    move further inward at random (real minus u, fake plus u, u ~ U(0, label_noise)).

    Samples, quality scores and the saved generator come from ``sampler``: a copy of the
    generator in plain Keras layers, updated after every step. With ``ema_decay`` > 0 it
    holds an exponential moving average of the generator's weights (Yazici et al. 2019,
    "The Unusual Effectiveness of Averaging in GAN Training"); with 0, the weights
    themselves.

    With ``r1_gamma`` > 0 the discriminator's loss gains the R1 penalty (Mescheder et al.
    2018, "Which Training Methods for GANs do actually Converge?"): gamma / 2 times the mean
    squared norm of the gradient of D's output (its logit, or its probability for a sigmoid
    D) with respect to the real images. As in
    StyleGAN2 (Karras et al. 2020) it is applied lazily, every ``r1_interval`` steps with
    gamma scaled by the interval, so it costs a fraction of a double backward pass per step.
    """

    def __init__(self, generator: keras.Model, discriminator: keras.Model, latent_dim: int, seed: int, label_noise: float = 0.0,
                 label_smoothing: float = 0.0, ema_decay: float = 0.0, joint_batch: bool = False, r1_gamma: float = 0.0,
                 r1_interval: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.ema_decay = ema_decay
        self.joint_batch = joint_batch
        self.r1_gamma = r1_gamma
        self.r1_interval = r1_interval
        self.sampler = standard_copy(generator)
        self.latent_dim = latent_dim
        self.label_noise = label_noise
        self.label_smoothing = label_smoothing
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("d_loss", "g_loss", "d_real", "d_fake")}
        self.built = True  # both networks are; Keras must not build this model by calling it on images

    def compile(self, d_optimizer: keras.optimizers.Optimizer, g_optimizer: keras.optimizers.Optimizer, loss_fn: keras.losses.BinaryCrossentropy):
        super().compile()
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer
        self.loss_fn = loss_fn
        self.probability = tf.sigmoid if loss_fn.from_logits else tf.identity

    def _targets(self, real: bool, like: tf.Tensor) -> tf.Tensor:
        targets = tf.fill(tf.shape(like), 1.0 - self.label_smoothing if real else 0.0)
        if not self.label_noise:
            return targets
        jitter = self.label_noise * keras.random.uniform(tf.shape(like), seed=self.seed_generator)
        return targets - jitter if real else targets + jitter

    @property
    def metrics(self):
        return list(self.trackers.values())

    def call(self, noise, training=False):
        return self.generator(noise, training=training)

    def train_step(self, real_images):
        batch_size = tf.shape(real_images)[0]
        # Under a mirrored strategy each replica gets its share of the batch; the replicas
        # share one RNG state, so each takes its own slice of one global noise batch.
        replica = tf.distribute.get_replica_context()
        replicas, index = (replica.num_replicas_in_sync, replica.replica_id_in_sync_group) if replica else (1, 0)
        noise = keras.random.normal((batch_size * replicas, self.latent_dim), seed=self.seed_generator)
        noise = noise[index * batch_size : (index + 1) * batch_size]
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            fake_images = self.generator(noise, training=True)
            if self.joint_batch:
                scores = self.discriminator(tf.concat([real_images, fake_images], axis=0), training=True)
                real_out, fake_out = scores[:batch_size], scores[batch_size:]
            else:
                real_out = self.discriminator(real_images, training=True)
                fake_out = self.discriminator(fake_images, training=True)
            g_loss = self.loss_fn(tf.ones_like(fake_out), fake_out)
            d_loss = self.loss_fn(self._targets(True, real_out), real_out) + self.loss_fn(self._targets(False, fake_out), fake_out)
            # The identity except under mixed_float16's loss scaling, which the optimizer undoes.
            scaled_g_loss, scaled_d_loss = self.g_optimizer.scale_loss(g_loss), self.d_optimizer.scale_loss(d_loss)
        g_grads = g_tape.gradient(scaled_g_loss, self.generator.trainable_weights)
        d_grads = d_tape.gradient(scaled_d_loss, self.discriminator.trainable_weights)
        if self.r1_gamma:
            penalty_grads = tf.cond(
                self.d_optimizer.iterations % self.r1_interval == 0,
                lambda: self._r1_gradients(real_images),
                lambda: [tf.zeros_like(weight) for weight in self.discriminator.trainable_weights],
            )
            d_grads = [grad + penalty for grad, penalty in zip(d_grads, penalty_grads)]
        self.g_optimizer.apply(g_grads, self.generator.trainable_weights)
        self.d_optimizer.apply(d_grads, self.discriminator.trainable_weights)
        # In cross-replica context, where one assignment updates every replica's copy.
        if replica:
            replica.merge_call(lambda _: self._update_sampler())
        else:
            self._update_sampler()

        # Keras divides losses by the replica count (gradients are summed over replicas);
        # the logged values are per-sample means again.
        self.trackers["d_loss"].update_state(d_loss * replicas)
        self.trackers["g_loss"].update_state(g_loss * replicas)
        self.trackers["d_real"].update_state(tf.reduce_mean(self.probability(real_out)))
        self.trackers["d_fake"].update_state(tf.reduce_mean(self.probability(fake_out)))
        logs = {name: tracker.result() for name, tracker in self.trackers.items()}
        skipping = [opt.skipped_steps for opt in (self.d_optimizer, self.g_optimizer) if isinstance(opt, SkipNonFiniteSteps)]
        if skipping:
            logs["skipped_steps"] = tf.add_n(skipping)
        return logs

    def _r1_gradients(self, real_images: tf.Tensor) -> list:
        """Gradients of the (loss-scaled) lazy R1 penalty with respect to D's weights."""
        replica = tf.distribute.get_replica_context()
        replicas = replica.num_replicas_in_sync if replica else 1
        with tf.GradientTape() as weights_tape:
            with tf.GradientTape() as images_tape:
                images_tape.watch(real_images)
                real_logit_sum = tf.reduce_sum(self.discriminator(real_images, training=True))
            slopes = images_tape.gradient(real_logit_sum, real_images)
            squared_norms = tf.reduce_sum(tf.square(tf.cast(slopes, "float32")), axis=tf.range(1, tf.rank(slopes)))
            # Divided by the replica count as Keras does the losses: replicas' gradients are summed.
            penalty = 0.5 * self.r1_gamma * self.r1_interval * tf.reduce_mean(squared_norms) / replicas
            scaled_penalty = self.d_optimizer.scale_loss(penalty)
        weights = self.discriminator.trainable_weights
        grads = weights_tape.gradient(scaled_penalty, weights)
        # D's last bias does not move the input gradient: a zero, not None, for it.
        return [tf.zeros_like(weight) if grad is None else grad for grad, weight in zip(grads, weights)]

    def _update_sampler(self) -> None:
        # tf.train.ExponentialMovingAverage's warm-up: early averages forget the random init.
        step = tf.cast(self.g_optimizer.iterations, "float32")
        decay = tf.minimum(self.ema_decay, (1.0 + step) / (10.0 + step))
        for average, current in zip(self.sampler.variables, self.generator.variables):
            average.assign(decay * average + (1.0 - decay) * current)

    def state_variables(self) -> list:
        """Every variable a resumed run needs: weights, BN statistics, RNG states, optimizer
        slots and the loss trackers' running totals."""
        return [*self.variables, *self.d_optimizer.variables, *self.g_optimizer.variables, *self.metrics_variables]
