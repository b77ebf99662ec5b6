"""The one GAN model: a ``keras.Model`` holding both networks, trained with ``fit``."""

from __future__ import annotations

import keras
import tensorflow as tf

from dcgan.augment import augment
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
        self.skipped_steps = self.add_variable(
            shape=(), dtype="int", initializer="zeros", aggregation="none", name="skipped_steps"
        )
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
    """A DCGAN trained by ``fit``: each step draws one noise batch and updates both networks
    from the same forward pass (the TensorFlow DCGAN tutorial's step).

    Options (the papers; what each changes is measured in docs/history.md):
    - ``loss_fn``: binary cross-entropy on D's logits or, ``from_logits=False``, its sigmoid.
    - ``joint_batch``: D scores real and generated images as one batch (keras-io's DCGAN,
      for BatchNorm Ds that would otherwise tell the halves apart by batch statistics);
      else in two calls (the TF tutorial, pytorch/examples' dcgan; Radford et al. 2016).
    - ``label_smoothing``: D's target for real images is 1 - label_smoothing (one-sided,
      Salimans et al. 2016, "Improved Techniques for Training GANs").
    - ``label_noise``: both targets move inward by u ~ U(0, label_noise) per sample.
    - ``ema_decay``: ``sampler`` (samples, scores, the saved generator) holds an exponential
      moving average of G's weights (Yazici et al. 2019, "The Unusual Effectiveness of
      Averaging in GAN Training"); 0: a copy of the weights.
    - ``r1_gamma``, ``r1_interval``: D's loss gains gamma / 2 * E|grad_x D(x)|^2 on real
      images (Mescheder et al. 2018, "Which Training Methods for GANs do actually
      Converge?"), applied every ``r1_interval`` steps with gamma scaled to match (lazy R1,
      StyleGAN2, Karras et al. 2020).
    - ``augment``: DiffAugment's transformations (``dcgan.augment``) applied to every image
      D sees, real or generated, the R1 penalty's included (as StyleGAN2-ADA does).

    Logged: ``d_loss``, ``g_loss``, D's mean probability on real (``d_real``) and generated
    (``d_fake``) images, and under mixed precision ``skipped_steps`` (``SkipNonFiniteSteps``).
    """

    def __init__(
        self,
        generator: keras.Model,
        discriminator: keras.Model,
        latent_dim: int,
        seed: int,
        label_noise: float = 0.0,
        label_smoothing: float = 0.0,
        ema_decay: float = 0.0,
        joint_batch: bool = False,
        r1_gamma: float = 0.0,
        r1_interval: int = 1,
        augment: tuple[str, ...] = (),
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.ema_decay = ema_decay
        self.joint_batch = joint_batch
        self.r1_gamma = r1_gamma
        self.r1_interval = r1_interval
        self.augment = tuple(augment)
        self.sampler = standard_copy(generator)
        self.latent_dim = latent_dim
        self.label_noise = label_noise
        self.label_smoothing = label_smoothing
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("d_loss", "g_loss", "d_real", "d_fake")}
        self.built = True  # both networks are; Keras must not build this model by calling it on images

    def compile(
        self,
        d_optimizer: keras.optimizers.Optimizer,
        g_optimizer: keras.optimizers.Optimizer,
        loss_fn: keras.losses.BinaryCrossentropy,
    ):
        super().compile()
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer
        self.loss_fn = loss_fn
        self.probability = tf.sigmoid if loss_fn.from_logits else tf.identity

    @property
    def metrics(self):
        return list(self.trackers.values())

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Nothing to build: the networks and optimizers are built before ``fit``. (Keras'
        version, under a distribution strategy, takes a batch from the data to build with and
        averages it over the replicas: under multi_worker a collective of no use.)"""

    def call(self, noise, training=False):
        return self.generator(noise, training=training)

    def train_step(self, real_images):
        noise = self._noise(tf.shape(real_images)[0])
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            # Generate, and let D score both halves.
            fake_images = self.generator(noise, training=True)
            real_out, fake_out = self._discriminate(real_images, fake_images)
            # G wants its images scored real; D wants each half scored as what it is.
            g_loss = self.loss_fn(tf.ones_like(fake_out), fake_out)
            d_loss = self.loss_fn(self._targets(True, real_out), real_out) + self.loss_fn(
                self._targets(False, fake_out), fake_out
            )
            # The identity except under mixed_float16's loss scaling, which the optimizer undoes.
            scaled_g_loss, scaled_d_loss = self.g_optimizer.scale_loss(g_loss), self.d_optimizer.scale_loss(d_loss)
        # Both networks' gradients from the one forward pass; D's with the R1 penalty's added.
        g_grads = g_tape.gradient(scaled_g_loss, self.generator.trainable_weights)
        d_grads = d_tape.gradient(scaled_d_loss, self.discriminator.trainable_weights)
        if self.r1_gamma:
            d_grads = [grad + penalty for grad, penalty in zip(d_grads, self._lazy_r1_gradients(real_images))]
        # Apply both updates, then move the sampler towards the new generator.
        self.g_optimizer.apply(g_grads, self.generator.trainable_weights)
        self.d_optimizer.apply(d_grads, self.discriminator.trainable_weights)
        self._update_sampler()
        return self._logs(d_loss, g_loss, real_out, fake_out)

    def _noise(self, batch_size: tf.Tensor) -> tf.Tensor:
        """This replica's latent batch. The replicas of a mirrored strategy share one RNG
        state, so each takes its own slice of one global noise batch."""
        replicas, index = _replica_count_and_index()
        noise = keras.random.normal((batch_size * replicas, self.latent_dim), seed=self.seed_generator)
        return noise[index * batch_size : (index + 1) * batch_size]

    def _discriminate(self, real_images: tf.Tensor, fake_images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """D's outputs on the real and the generated batch (each augmented): one call with
        ``joint_batch``, else two."""
        real_images, fake_images = self._augmented(real_images), self._augmented(fake_images)
        if not self.joint_batch:
            return self.discriminator(real_images, training=True), self.discriminator(fake_images, training=True)
        scores = self.discriminator(tf.concat([real_images, fake_images], axis=0), training=True)
        batch_size = tf.shape(real_images)[0]
        return scores[:batch_size], scores[batch_size:]

    def _augmented(self, images: tf.Tensor) -> tf.Tensor:
        return augment(images, self.augment, self.seed_generator) if self.augment else images

    def _targets(self, real: bool, like: tf.Tensor) -> tf.Tensor:
        """D's targets: 1 - label_smoothing for real images, 0 for generated ones, each moved
        inward by U(0, label_noise)."""
        targets = tf.fill(tf.shape(like), 1.0 - self.label_smoothing if real else 0.0)
        if not self.label_noise:
            return targets
        jitter = self.label_noise * keras.random.uniform(tf.shape(like), seed=self.seed_generator)
        return targets - jitter if real else targets + jitter

    def _lazy_r1_gradients(self, real_images: tf.Tensor) -> list:
        """The R1 penalty's gradients every ``r1_interval`` steps, zeros between."""
        return tf.cond(
            self.d_optimizer.iterations % self.r1_interval == 0,
            lambda: self._r1_gradients(real_images),
            lambda: [tf.zeros_like(weight) for weight in self.discriminator.trainable_weights],
        )

    def _r1_gradients(self, real_images: tf.Tensor) -> list:
        """Gradients of the (loss-scaled) R1 penalty with respect to D's weights."""
        replicas, _ = _replica_count_and_index()
        with tf.GradientTape() as weights_tape:
            with tf.GradientTape() as images_tape:
                images_tape.watch(real_images)
                real_logit_sum = tf.reduce_sum(self.discriminator(self._augmented(real_images), training=True))
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
        """Move the sampler's weights towards the generator's (an EMA, or a plain copy)."""
        replica = tf.distribute.get_replica_context()
        if replica:  # to cross-replica context, where one assignment updates every replica's copy
            replica.merge_call(lambda _: self._update_sampler())
            return
        # tf.train.ExponentialMovingAverage's warm-up: early averages forget the random init.
        step = tf.cast(self.g_optimizer.iterations, "float32")
        decay = tf.minimum(self.ema_decay, (1.0 + step) / (10.0 + step))
        for average, current in zip(self.sampler.variables, self.generator.variables):
            average.assign(decay * average + (1.0 - decay) * current)

    def _logs(self, d_loss: tf.Tensor, g_loss: tf.Tensor, real_out: tf.Tensor, fake_out: tf.Tensor) -> dict:
        """The running means ``fit`` reports, and the updates skipped so far."""
        # Keras divides losses by the replica count (gradients are summed over replicas);
        # the logged values are per-sample means again.
        replicas, _ = _replica_count_and_index()
        self.trackers["d_loss"].update_state(d_loss * replicas)
        self.trackers["g_loss"].update_state(g_loss * replicas)
        self.trackers["d_real"].update_state(tf.reduce_mean(self.probability(real_out)))
        self.trackers["d_fake"].update_state(tf.reduce_mean(self.probability(fake_out)))
        logs = {name: tracker.result() for name, tracker in self.trackers.items()}
        skipping = [
            opt.skipped_steps for opt in (self.d_optimizer, self.g_optimizer) if isinstance(opt, SkipNonFiniteSteps)
        ]
        if skipping:
            logs["skipped_steps"] = tf.add_n(skipping)
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras averages logs over the workers along axis 0, which scalars lack.
            logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs

    def state_variables(self) -> list:
        """Every variable a resumed run needs: weights, BN statistics, RNG states, optimizer
        slots and the loss trackers' running totals. Not the optimizers' learning rates: they
        come from the config, and an optimizer keeps them as variables only when they are
        constant, so a checkpoint of constant rates continues into a decaying schedule."""
        slots = [
            variable
            for variable in [*self.d_optimizer.variables, *self.g_optimizer.variables]
            if variable.name != "learning_rate"
        ]
        return [*self.variables, *slots, *self.metrics_variables]


def _replica_count_and_index() -> tuple[int, int]:
    replica = tf.distribute.get_replica_context()
    return (replica.num_replicas_in_sync, replica.replica_id_in_sync_group) if replica else (1, 0)
