"""Architectures and the GAN model: shapes, parameter counts, a real train step, checkpoints."""

import copy
import dataclasses
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY, compose_config, copy_of_repo, last_line_error, subprocess_env

from dcgan import models
from dcgan.checkpoints import CheckpointDir, RunState
from dcgan.commands.train import build_gan, make_optimizer, train
from dcgan.data.pipeline import training_dataset
from dcgan.data.tfrecords import load_manifest
from dcgan.errors import UserError
from dcgan.gan import GAN, SkipNonFiniteSteps
from dcgan.models.layers import FastDropout, FusedBatchNormalization, standard_copy
from dcgan.paths import TrainOutputs
from dcgan.resume import Schedule, resume_or_start


def tutorial_model(**changes):
    """conf/model/dcgan_mnist.yaml: the TF tutorial's networks."""
    return dataclasses.replace(compose_config(["model=dcgan_mnist"]).model, **changes)


def test_tutorial_architecture_matches_published_counts():
    generator, discriminator = models.build(tutorial_model(), (28, 28, 1), [-1.0, 1.0])
    assert generator.count_params() == 2_330_944
    assert discriminator.count_params() == 212_865
    # One more block: + a 5x5 128->256 convolution (819,456), and the Dense sees 4x4x256.
    assert models.build(tutorial_model(d_blocks=3), (28, 28, 1), [-1.0, 1.0])[1].count_params() == 1_030_145
    # G's three widths scale with g_filters g: 250 g^2 + 20,421 g parameters (g = 96: 1.5x as wide).
    assert models.build(tutorial_model(g_filters=96), (28, 28, 1), [-1.0, 1.0])[0].count_params() == 4_264_416
    noise = np.random.default_rng(0).standard_normal((3, 100)).astype(np.float32)
    images = np.asarray(generator(noise, training=False))
    assert images.shape == (3, 28, 28, 1)
    assert -1.0 <= images.min() and images.max() <= 1.0  # tanh
    assert np.asarray(discriminator(images)).shape == (3, 1)


def test_image_size_the_model_cannot_make():
    with pytest.raises(
        UserError,
        match=r"config key data.image_size: model dcgan_mnist makes 28x28x1 images only, but the data is \(32, 32, 1\)",
    ):
        models.build(tutorial_model(), (32, 32, 1), [-1.0, 1.0])


def test_train_refuses_a_size_the_model_cannot_make_before_any_data_work(tmp_path):
    config = compose_config(["model=dcgan", "data.image_size=48"], tmp_path)
    with pytest.raises(UserError, match=r"model dcgan needs square images whose side is a power of two.*\(48, 48, 1\)"):
        train(config)
    assert not Path(config.paths.raw_dir).exists() and not Path(config.paths.prepared_dir).exists()


def test_unknown_architecture():
    with pytest.raises(UserError, match="config key model.name: unknown architecture 'resnet'"):
        models.build(dataclasses.replace(tutorial_model(), name="resnet"), (28, 28, 1), [-1.0, 1.0])


def _gan_and_batch(tiny_prepared, config=None):
    folder = Path(tiny_prepared.paths.prepared_dir) / "mnist"
    manifest = load_manifest(folder)
    batch = next(iter(training_dataset(folder, manifest, 32, 0, 512, 0)))
    return build_gan(config or tiny_prepared, manifest, total_steps=100), batch


def test_one_train_step_updates_both_networks(tiny_prepared):
    gan, batch = _gan_and_batch(tiny_prepared)
    before_g = [w.numpy().copy() for w in gan.generator.trainable_weights]
    before_d = [w.numpy().copy() for w in gan.discriminator.trainable_weights]
    logs = gan.train_step(batch)
    mixed = isinstance(gan.g_optimizer, SkipNonFiniteSteps)  # precision auto: bfloat16 on CPUs that have it
    assert set(logs) == {"d_loss", "g_loss", "d_real", "d_fake", *(["skipped_steps"] if mixed else [])}
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert 0.0 < float(logs["d_real"]) < 1.0 and 0.0 < float(logs["d_fake"]) < 1.0
    assert all(not np.array_equal(b, w.numpy()) for b, w in zip(before_g, gan.generator.trainable_weights))
    assert all(not np.array_equal(b, w.numpy()) for b, w in zip(before_d, gan.discriminator.trainable_weights))
    assert int(gan.g_optimizer.iterations.numpy()) == 1 and int(gan.d_optimizer.iterations.numpy()) == 1


@pytest.mark.parametrize("model, d_batches", [("dcgan_mnist", [32, 32]), ("dcgan", [32, 32]), ("dcgan_fashion", [64])])
def test_discriminator_sees_real_and_fake_jointly_only_where_the_model_says(tiny_prepared, model, d_batches):
    config = compose_config([f"model={model}"])
    generator, discriminator = models.build(config.model, (28, 28, 1) if model != "dcgan" else (32, 32, 1), [-1.0, 1.0])
    seen = []
    recording = keras.Sequential(
        [keras.layers.Lambda(lambda images: (seen.append(images.shape[0]), images)[1]), discriminator]
    )
    gan = GAN(generator, recording, config.model.latent_dim, seed=0, joint_batch=config.model.d_joint_batch)
    gan.compile(
        make_optimizer(config.optimizer, "discriminator"),
        make_optimizer(config.optimizer, "generator"),
        keras.losses.BinaryCrossentropy(from_logits=config.model.d_output == "logits"),
    )
    images = np.zeros((32, *generator.output_shape[1:]), np.float32)
    recording(images[:1])
    seen.clear()  # building the Lambda (a symbolic call) and the first call recorded too
    gan.train_step(images)  # eager: one record per discriminator call
    assert seen == d_batches


def test_sampler_is_an_exponential_moving_average_of_the_generator(tiny_prepared):
    config = copy.deepcopy(tiny_prepared)
    config.train.ema_decay = 0.999
    gan, batch = _gan_and_batch(tiny_prepared, config)
    assert gan.sampler is not gan.generator
    averages = [v.numpy().copy() for v in gan.sampler.variables]
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(averages, gan.generator.variables))
    for step in (1, 2):
        gan.train_step(batch)
        decay = min(0.999, (1 + step) / (10 + step))  # warm-up: the random init is forgotten fast
        averages = [decay * a + (1 - decay) * v.numpy() for a, v in zip(averages, gan.generator.variables)]
        assert all(np.allclose(a, v.numpy(), atol=1e-6) for a, v in zip(averages, gan.sampler.variables))
    assert not np.array_equal(gan.sampler.variables[0].numpy(), gan.generator.variables[0].numpy())


def test_without_averaging_the_sampler_follows_the_generator(tiny_prepared):
    config = copy.deepcopy(tiny_prepared)
    config.train.ema_decay = 0.0
    gan, batch = _gan_and_batch(tiny_prepared, config)
    gan.train_step(batch)
    assert all(np.array_equal(a.numpy(), v.numpy()) for a, v in zip(gan.sampler.variables, gan.generator.variables))
    noise = np.random.default_rng(0).standard_normal((4, 100)).astype(np.float32)
    assert np.array_equal(np.asarray(gan.sampler(noise)), np.asarray(gan.generator(noise)))


def test_r1_penalty_gradients_match_the_closed_form_of_a_linear_discriminator(tiny_prepared):
    """D(x) = w.x + b: every real image's input gradient is w, so the penalty is
    gamma / 2 * interval * |w|^2, whose gradient is gamma * interval * w (and 0 for b)."""
    config = compose_config(["train.precision=fp32"])
    generator, _ = models.build(config.model, (28, 28, 1), [-1.0, 1.0])
    linear = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(1)])
    gan = GAN(generator, linear, config.model.latent_dim, seed=0, r1_gamma=0.5, r1_interval=4)
    gan.compile(
        make_optimizer(config.optimizer, "discriminator"),
        make_optimizer(config.optimizer, "generator"),
        keras.losses.BinaryCrossentropy(from_logits=True),
    )
    images = tf.constant(np.random.default_rng(0).uniform(-1, 1, (8, 28, 28, 1)).astype(np.float32))
    kernel_grad, bias_grad = gan._r1_gradients(images)
    np.testing.assert_allclose(np.asarray(kernel_grad), 0.5 * 4 * linear.layers[-1].kernel.numpy(), rtol=1e-5)
    assert not np.any(np.asarray(bias_grad))


def test_lazy_r1_trains_every_interval(tiny_prepared):
    config = copy.deepcopy(tiny_prepared)
    config.train.r1_gamma, config.train.r1_interval = 0.1, 2
    gan, batch = _gan_and_batch(tiny_prepared, config)
    for _ in range(2):  # with the penalty, then without
        logs = gan.train_step(batch)
    assert all(np.isfinite(float(v)) for v in logs.values()) and int(gan.d_optimizer.iterations.numpy()) == 2


@pytest.mark.parametrize("shape", [(64, 12), (16, 5, 5, 8)])
def test_fused_batch_normalization_matches_keras(shape):
    """Training outputs, moving statistics and gradients as Keras' own layer computes them."""
    rng = np.random.default_rng(0)
    inputs, weights = rng.normal(2.0, 3.0, shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)
    fused, plain = FusedBatchNormalization(momentum=0.9), keras.layers.BatchNormalization(momentum=0.9)
    for layer in (fused, plain):
        layer.build(shape)
        layer.gamma.assign(np.linspace(0.5, 1.5, shape[-1]))
        layer.beta.assign(np.linspace(-1.0, 1.0, shape[-1]))
    results = []
    for layer in (fused, plain):
        with tf.GradientTape() as tape:
            x = tf.constant(inputs)
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * weights)
        grads = tape.gradient(loss, [x, layer.gamma.value, layer.beta.value])
        results.append([y, layer.moving_mean, layer.moving_variance, *grads])
    for got, want in zip(*results):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(fused(inputs)), np.asarray(plain(inputs)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_fast_dropout_drops_at_the_rate_and_keeps_expectations(policy):
    layer = FastDropout(0.3, seed=0, dtype=policy)
    ones = tf.ones((1000, 999))  # an odd count: the last 32-bit draw is used by half
    with tf.GradientTape() as tape:
        tape.watch(ones)
        outputs = layer(ones, training=True)
    grads, outputs = np.asarray(tape.gradient(outputs, ones), np.float32), np.asarray(outputs, np.float32)
    kept = outputs != 0
    assert abs(kept.mean() - 0.7) < 0.003  # 6 standard deviations of the kept share
    scale = np.float32(tf.constant(65536 / (65536 - 19661), layer.compute_dtype))  # 19,661 = round(0.3 * 65,536)
    assert np.all(outputs[kept] == scale) and np.array_equal(grads, outputs)
    assert abs(outputs.mean() - 1.0) < 0.006
    assert not np.array_equal(np.asarray(layer(ones, training=True), np.float32), outputs)  # fresh masks each call
    assert np.array_equal(np.asarray(FastDropout(0.3, seed=0, dtype=policy)(ones, training=True), np.float32), outputs)
    assert np.array_equal(np.asarray(layer(ones, training=False), np.float32), np.asarray(ones))


def test_saved_networks_need_only_keras(tiny_prepared, tmp_path):
    gan, _ = _gan_and_batch(tiny_prepared)
    assert any(isinstance(layer, FusedBatchNormalization) for layer in gan.generator.layers)
    assert any(isinstance(layer, FastDropout) for layer in gan.discriminator.layers)
    noise = np.random.default_rng(0).standard_normal((4, 100)).astype(np.float32)
    for network, trained, inputs in (
        (gan.sampler, gan.generator, noise),
        (standard_copy(gan.discriminator), gan.discriminator, gan.generator(noise)),
    ):
        path = tmp_path / f"{trained.name}.keras"
        network.save(path)
        with zipfile.ZipFile(path) as archive:
            assert "dcgan" not in archive.read("config.json").decode().replace(f'"name": "{trained.name}"', "")
        loaded = keras.models.load_model(path)
        assert np.array_equal(np.asarray(loaded(inputs)), np.asarray(trained(inputs)))


def test_checkpoint_round_trip_restores_every_variable(tiny_prepared, tmp_path):
    gan, batch = _gan_and_batch(tiny_prepared)
    gan.train_step(batch)
    checkpoints = CheckpointDir(tmp_path, keep=1)
    checkpoints.save(gan.state_variables(), RunState(identity={"a": 1}, epochs=1))
    saved = [v.numpy().copy() for v in gan.state_variables()]
    gan.train_step(batch)  # moves weights, optimizer slots and RNG states on

    fresh, _ = _gan_and_batch(tiny_prepared)
    state = checkpoints.load_state()
    assert state.epochs == 1 and state.identity == {"a": 1}
    checkpoints.restore(fresh.state_variables(), state)
    assert all(np.array_equal(s, v.numpy()) for s, v in zip(saved, fresh.state_variables()))
    # Includes the noise RNG: the restored model draws the noise the original drew next.
    names = [v.path for v in fresh.state_variables()]
    assert any("seed_generator" in n for n in names) and any("adam" in n for n in names)


def test_checkpoint_of_other_latent_size_is_refused(tiny_prepared, tmp_path):
    gan, _ = _gan_and_batch(tiny_prepared)
    checkpoints = CheckpointDir(tmp_path, keep=1)
    checkpoints.save(gan.state_variables(), RunState(identity={}, epochs=1))
    manifest = load_manifest(Path(tiny_prepared.paths.prepared_dir) / "mnist")
    other = build_gan(compose_config(TINY + ["model.latent_dim=64"]), manifest, total_steps=100)
    with pytest.raises(UserError, match=r"variable .* has shape \(100, 12544\) in the checkpoint but \(64, 12544\)"):
        checkpoints.restore(other.state_variables(), checkpoints.load_state())


def test_a_branch_needs_a_checkpoint_of_the_other_run(tmp_path):
    other = tmp_path / "other/models"  # a typo'd folder: nothing is created there either
    own = TrainOutputs(tmp_path / "models", tmp_path / "reports")
    with pytest.raises(UserError) as refused:
        resume_or_start("auto", {}, Schedule(2, 1), None, CheckpointDir(own.checkpoints, 2), own, branch_from=other)
    assert str(refused.value) == (
        f"config key train.branch_from: {other} holds no training checkpoint ({other}/checkpoints/state.json)"
    )
    assert not own.models_dir.exists() and not other.parent.exists()


def test_checkpoints_hold_the_same_variables_whatever_the_learning_rates(tiny_prepared):
    """The rates come from the config, not the checkpoint: Keras keeps constant ones as
    variables and a schedule's not, and a constant-rate run must continue into a decay."""
    manifest = load_manifest(Path(tiny_prepared.paths.prepared_dir) / "mnist")
    layouts = [
        [(tuple(variable.shape), variable.dtype) for variable in build_gan(config, manifest, 100).state_variables()]
        for config in (compose_config(TINY), compose_config([*TINY, "train.lr_decay=0.5"]))
    ]
    assert layouts[0] == layouts[1] and len(layouts[0]) > 40


def test_old_checkpoints_are_pruned(tmp_path):
    import keras

    variable = keras.Variable(np.zeros(2))
    checkpoints = CheckpointDir(tmp_path, keep=2)
    for epoch in range(1, 5):
        checkpoints.save([variable], RunState(identity={}, epochs=epoch, step=epoch * 10))
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-000000030.npz", "ckpt-000000040.npz"]
    assert checkpoints.load_state().checkpoint == "ckpt-000000040.npz"


@pytest.mark.parametrize(
    "name, shape",
    [
        ("dcgan", (32, 32, 1)),
        ("dcgan", (64, 64, 3)),
        ("dcgan", (128, 128, 3)),
        ("dcgan_fashion", (28, 28, 1)),
        ("dcgan_fashion", (32, 32, 3)),
        ("dcgan_rgb128", (128, 128, 3)),
        ("dcgan_rgb128", (128, 128, 1)),
    ],
)
def test_every_architecture_builds_and_trains_a_step(name, shape):
    config = compose_config([f"model={name}"])
    model = config.model
    generator, discriminator = models.build(model, shape, [-1.0, 1.0])
    noise = np.random.default_rng(0).standard_normal((2, model.latent_dim)).astype(np.float32)
    images = np.asarray(generator(noise, training=False))
    assert images.shape == (2, *shape) and -1.0 <= images.min() and images.max() <= 1.0
    scores = np.asarray(discriminator(images, training=False))
    assert scores.shape == (2, 1)
    if model.d_output == "sigmoid":
        assert 0.0 <= scores.min() and scores.max() <= 1.0

    import keras

    from dcgan.commands.train import make_optimizer
    from dcgan.gan import GAN

    gan = GAN(generator, discriminator, model.latent_dim, seed=0, label_noise=config.train.label_noise or 0.1)
    gan.compile(
        make_optimizer(config.optimizer, "discriminator"),
        make_optimizer(config.optimizer, "generator"),
        keras.losses.BinaryCrossentropy(from_logits=model.d_output == "logits"),
    )
    before = generator.trainable_weights[0].numpy().copy()
    logs = gan.train_step(np.random.default_rng(1).uniform(-1, 1, (4, *shape)).astype(np.float32))
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert not np.array_equal(before, generator.trainable_weights[0].numpy())


def test_dcgan_follows_the_paper_layout():
    generator, discriminator = models.build(compose_config(["model=dcgan"]).model, (64, 64, 3), [0.0, 1.0])
    kinds = [type(layer).__name__ for layer in generator.layers]
    assert "Dense" not in kinds and kinds.count("Conv2DTranspose") == 5  # 1 -> 4 -> 8 -> 16 -> 32 -> 64
    assert generator.layers[-1].activation.__name__ == "sigmoid"  # follows data.pixel_range [0, 1]
    assert [layer.filters for layer in generator.layers if hasattr(layer, "filters")] == [512, 256, 128, 64, 3]
    assert not any("Pooling" in type(layer).__name__ for layer in discriminator.layers)


def test_rmsprop_decay_matches_keras2():
    config = compose_config(
        ["optimizer=rmsprop", "optimizer.generator.decay=0.01", "optimizer.generator.clipvalue=1.0"]
    )
    optimizer = make_optimizer(config.optimizer, "generator")
    assert optimizer.clipvalue == 1.0
    schedule = optimizer.learning_rate if callable(optimizer.learning_rate) else optimizer._learning_rate
    assert float(schedule(100)) == pytest.approx(1e-4 / (1 + 0.01 * 100))


def test_label_smoothing_is_one_sided_and_label_noise_moves_both_targets_inward():
    from dcgan.gan import GAN

    generator, discriminator = models.build(tutorial_model(), (28, 28, 1), [-1.0, 1.0])
    like = tf.zeros((4096, 1))
    smoothed = GAN(generator, discriminator, 100, seed=0, label_smoothing=0.1)
    assert np.all(smoothed._targets(True, like).numpy() == np.float32(0.9))
    assert np.all(smoothed._targets(False, like).numpy() == 0.0)  # fakes keep 0
    noisy = GAN(generator, discriminator, 100, seed=0, label_smoothing=0.1, label_noise=0.05)
    real, fake = noisy._targets(True, like).numpy(), noisy._targets(False, like).numpy()
    assert 0.85 <= real.min() < 0.86 and 0.89 < real.max() <= 0.9
    assert 0.0 <= fake.min() < 0.01 and 0.04 < fake.max() <= 0.05
    with pytest.raises(UserError, match="train.label_smoothing"):
        compose_config(["train.label_smoothing=0.5"])


def test_lr_decay_holds_then_falls_linearly_to_zero():
    config = compose_config(["train.lr_decay=0.5"])
    optimizer = make_optimizer(config.optimizer, "generator", config.train.lr_decay, total_steps=1000)
    schedule = optimizer._learning_rate
    lr = config.optimizer.generator.learning_rate
    assert [float(schedule(step)) for step in (0, 500, 750, 1000, 1200)] == pytest.approx([lr, lr, lr / 2, 0.0, 0.0])
    # On top of RMSprop's Keras-2 decay: the product of both.
    rmsprop = compose_config(["optimizer=rmsprop", "optimizer.generator.decay=0.01"]).optimizer
    schedule = make_optimizer(rmsprop, "generator", 0.5, total_steps=1000)._learning_rate
    assert float(schedule(750)) == pytest.approx(1e-4 / (1 + 0.01 * 750) / 2)


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_steps_keep_float32_weights_and_outputs(tiny_prepared, precision):

    gan, batch = _gan_and_batch(tiny_prepared, compose_config([*TINY, f"train.precision={precision}"]))
    logs = gan.train_step(batch[:4])  # float16 convolutions are emulated on CPUs: a few images suffice
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert gan.generator.layers[1].compute_dtype == precision.removeprefix("mixed_")  # hidden layers: low precision
    assert all(w.dtype == "float32" for w in gan.generator.weights + gan.discriminator.weights)
    assert gan.generator.layers[-1].compute_dtype == "float32"  # outputs and losses stay float32
    assert isinstance(gan.g_optimizer, SkipNonFiniteSteps) and gan.g_optimizer.scaling == (precision == "mixed_float16")
    assert int(logs["skipped_steps"]) == 0


@pytest.mark.parametrize("scaling", [False, True])
def test_non_finite_gradients_skip_the_update_and_are_counted(scaling):
    weight = keras.Variable(np.ones(3, "float32"))
    optimizer = SkipNonFiniteSteps(keras.optimizers.Adam(0.1), scaling=scaling)
    optimizer.build([weight])
    scale = float(optimizer.dynamic_scale.numpy())
    assert scale == (2.0**15 if scaling else 1.0)
    optimizer.apply([tf.constant([1.0, np.nan, 1.0])], [weight])
    optimizer.apply([tf.constant([np.inf, 1.0, 1.0])], [weight])
    assert np.array_equal(weight.numpy(), np.ones(3)) and int(optimizer.iterations.numpy()) == 0
    assert int(optimizer.skipped_steps.numpy()) == 2
    # float16's loss scale halves per skip; bfloat16 needs none and keeps 1.
    assert float(optimizer.dynamic_scale.numpy()) == (scale / 4 if scaling else 1.0)
    optimizer.apply([tf.constant([1.0, 1.0, 1.0]) * optimizer.dynamic_scale], [weight])
    assert (
        weight.numpy() == pytest.approx(np.full(3, 0.9), abs=1e-5) and int(optimizer.iterations.numpy()) == 1
    )  # Adam: lr * sign


TOY_ARCHITECTURE = """
from dataclasses import dataclass

import keras
from keras import layers
from omegaconf import MISSING

from dcgan.config import ModelConfig, require


@dataclass
class Settings(ModelConfig):
    kernel: int = MISSING

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.kernel % 2 == 1, "model.kernel", f"must be odd, got {self.kernel}")


def check(image_shape):
    return None if tuple(image_shape) == (28, 28, 1) else "makes 28x28x1 images only"


def build_generator(model, image_shape, output_activation):
    return keras.Sequential([
        keras.Input((model.latent_dim,)), layers.Dense(7 * 7 * model.filters), layers.Reshape((7, 7, model.filters)),
        layers.Conv2DTranspose(model.filters, model.kernel, strides=4, padding="same"),
        layers.LeakyReLU(model.leaky_slope),
        layers.Conv2D(1, model.kernel, padding="same", activation=output_activation, dtype="float32"),
    ], name="generator")


def build_discriminator(model, image_shape):
    return keras.Sequential([
        keras.Input(image_shape), layers.Conv2D(model.filters, model.kernel, strides=4, padding="same"),
        layers.LeakyReLU(model.leaky_slope), layers.Flatten(),
        layers.Dense(1, activation=model.d_activation(), dtype="float32"),
    ], name="discriminator")
"""
TOY_CONFIG = """name: toy
latent_dim: 16
leaky_slope: 0.2
d_output: logits
filters: 8
d_joint_batch: false
kernel: 3
"""


@pytest.mark.slow
def test_an_architecture_added_as_docs_layout_says_trains(tmp_path):
    """docs/layout.md's recipe, followed in a copy of the project: one module, one conf file."""
    project = copy_of_repo(tmp_path / "project")
    (project / "src/dcgan/models/toy.py").write_text(TOY_ARCHITECTURE)
    (project / "conf/model/toy.yaml").write_text(TOY_CONFIG)

    def train(*overrides: str):
        command = [sys.executable, "src/train.py", *TINY, "data.limit=256", "metrics.every=0", "model=toy", *overrides]
        return subprocess.run(command, cwd=project, env=subprocess_env(), capture_output=True, text=True, timeout=600)

    assert last_line_error(train("model.kernel=4")) == "error: config key model.kernel: must be odd, got 4"
    trained = train()
    assert trained.returncode == 0, trained.stderr[-3000:]
    generator = keras.models.load_model(project / "models/generator.keras")
    assert generator.input_shape == (None, 16) and generator.output_shape == (None, 28, 28, 1)
