"""Training speed, side by side in one process: the TensorFlow DCGAN tutorial's loop as
published vs the product's real training path, with FLOPs and the machine's matmul peak.

For the 28px tutorial architecture at batch 256 (and the 128px RGB model at batch 16):
  (a) reference: the tutorial's ``@tf.function`` step with two GradientTapes over
      ``from_tensor_slices(...).shuffle(...).batch(...)``, fp32 as published;
  (b) product: ``dcgan.commands.train.train`` itself (TFRecord pipeline, the GAN class, fit,
      every callback and MLflow logging on), in fp32 and with ``train.precision=auto``.
Each is warmed up (one epoch, excluded), then timed over several epochs: median and
spread of images/s, the ratio b/a, FLOPs per training image from the layer shapes,
achieved GFLOP/s and its share of a float32/bfloat16 matmul measured in the same run.
A roofline bound for the step: per op of the traced train step (the ops that run; their FLOPs
as TensorFlow's cost registry counts them, bytes = their inputs and outputs), the larger of
FLOPs over the matmul peak of the op's dtype and bytes over the memory bandwidth (a
STREAM-style copy measured in the same run), summed; the step's time as a multiple of it.
Also: the step without the lazy R1 penalty and the weight EMA (which the tutorial loop does
not have), the input pipeline alone, the share of a step spent waiting for input, and the
per-epoch overhead of grids, metrics, MLflow and checkpoints: measured with the in-training
scores every epoch and without them, then weighed by the setup's own cadence
(``metrics.every``) against its own epoch length (a pass over the data, or ``train.interval`` steps).

    python benchmarks/throughput.py [--steps 60] [--epochs 3]

The last line is machine-readable: ``speedup_vs_tutorial=... fraction_of_peak=...
step_vs_roofline=... precision=...`` (the achieved GFLOP/s of the ``auto`` path as a share of
the faster of the two matmul peaks, its step alone as a multiple of the roofline bound, and
the precision ``auto`` chose).
"""

from __future__ import annotations

import argparse
import collections
import copy
import logging
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops

from dcgan import models
from dcgan.callbacks import Throughput
from dcgan.cli import composed, user_errors_in_one_line
from dcgan.commands.train import build_gan, train
from dcgan.config import Config
from dcgan.data.pipeline import load_images, training_dataset
from dcgan.data.prepare import prepared_dataset
from dcgan.errors import TrainingDiverged
from dcgan.models.layers import FusedBatchNormalization, standard_copy
from dcgan.precision import cache_file, resolve_precision
from dcgan.resume import Schedule

REPO = Path(__file__).resolve().parents[1]


def configure(workdir: Path, setup: Config) -> Config:
    """A fresh copy of a setup's composed config for one timed run (the runs change theirs)."""
    config = copy.deepcopy(setup)
    # The project's prepared data and classifier cache (made by `dvc repro` or on first
    # use); the timed runs' models, reports and MLflow store go to a temp folder.
    for key in ("raw_dir", "prepared_dir", "classifier_dir"):
        setattr(config.paths, key, str(REPO / getattr(config.paths, key)))
    config.tracking.uri = f"sqlite:///{workdir / 'mlflow.db'}"
    return config


def spread(rates: list[float]) -> str:
    return f"{statistics.median(rates):8.1f} img/s  (min {min(rates):.1f}, max {max(rates):.1f}, {len(rates)} epochs)"


def matmul_peak(dtype: tf.DType, size: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of a square matmul, best of ``repeats``: the practical compute ceiling."""
    a = tf.random.normal((size, size), dtype=tf.float32)
    a = tf.cast(a, dtype)
    matmul = tf.function(lambda x: tf.reduce_sum(tf.cast(tf.matmul(x, x), tf.float32)))
    matmul(a).numpy()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        matmul(a).numpy()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def memory_bandwidth(megabytes: int = 512, repeats: int = 10) -> float:
    """GB/s of a STREAM-style copy (read one array, write another; 2 x its bytes moved) on
    every core this process may use, each copying its slice; best of ``repeats``."""
    source = np.ones(megabytes * 2**20 // 4, np.float32)
    target = np.zeros_like(source)
    cores = len(os.sched_getaffinity(0))
    slices = [slice(i * len(source) // cores, (i + 1) * len(source) // cores) for i in range(cores)]
    best = float("inf")
    with ThreadPoolExecutor(cores) as pool:  # numpy's copy lets go of the GIL
        for _ in range(repeats):
            started = time.perf_counter()
            list(pool.map(lambda part: np.copyto(target[part], source[part]), slices))
            best = min(best, time.perf_counter() - started)
    return 2 * source.nbytes / best / 1e9


# Ops that move no data of their own: views, reads of a variable's buffer, constants, control.
NO_DATA_MOVED = {
    "Const", "Identity", "IdentityN", "NoOp", "Placeholder", "ReadVariableOp", "VarHandleOp", "Shape", "ShapeN",
    "Reshape", "StopGradient", "Squeeze", "ExpandDims", "If", "StatelessIf",
}  # fmt: skip


def _tensor_bytes(tensor: tf.Tensor) -> int:
    if tensor.dtype in (tf.resource, tf.variant) or not tensor.shape.is_fully_defined():
        return 0
    return tensor.shape.num_elements() * tensor.dtype.size


def step_roofline(gan, batch: int, image_shape: tuple, peak: dict, bandwidth: float) -> tuple[float, list]:
    """The roofline bound (seconds) of one training step of ``gan`` at ``batch``, and per op
    type (count, GFLOP, MB, seconds of the bound, of which compute-bound), largest first. Only the ops that run:
    those the step's outputs and side effects (the weight updates) depend on; TensorFlow
    prunes the rest (e.g. the discriminator's weight gradients of the generator's loss). The
    lazy R1 branch (every ``r1_interval`` steps) is left out."""
    graph = tf.function(gan.train_step).get_concrete_function(tf.TensorSpec([batch, *image_shape])).graph
    live, pending = set(), [tensor.op for tensor in graph.outputs] + list(graph.control_outputs)
    while pending:
        op = pending.pop()
        if op.name not in live:
            live.add(op.name)
            pending.extend([tensor.op for tensor in op.inputs] + list(op.control_inputs))
    by_type = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0, 0.0])
    quiet = logging.getLogger("tensorflow")
    level, quiet.level = quiet.level, logging.ERROR  # the FLOP registry's TF1 deprecation notice
    try:
        for op in graph.get_operations():
            if op.name not in live or op.type in NO_DATA_MOVED:
                continue
            try:
                flops = tf_ops.get_stats_for_node_def(graph, op.node_def, "flops").value or 0
            except ValueError:  # no FLOP count registered: data movement only
                flops = 0
            moved = sum(_tensor_bytes(t) for t in [*op.inputs, *op.outputs])
            if op.type.startswith("Assign"):  # the variable's buffer is written too
                moved += _tensor_bytes(op.inputs[1])
            dtype = op.outputs[0].dtype if op.outputs else tf.float32
            ceiling = peak["bfloat16"] if dtype == tf.bfloat16 else peak["float32"]
            row = by_type[op.type]
            row[0] += 1
            row[1] += flops / 1e9
            row[2] += moved / 1e6
            compute, memory = flops / 1e9 / ceiling, moved / 1e9 / bandwidth
            row[3] += max(compute, memory)
            row[4] += compute if compute > memory else 0.0
    finally:
        quiet.level = level
    table = sorted(([name, *row] for name, row in by_type.items()), key=lambda row: -row[4])
    return sum(row[4] for row in table), table


def forward_flops(model: keras.Model) -> int:
    """Multiply-adds x 2 of the Dense, Conv2D and Conv2DTranspose layers, per image."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            total += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
        elif isinstance(layer, keras.layers.Conv2DTranspose):  # every input pixel spreads a k x k kernel
            h, w, c_in = layer.input.shape[1:]
            total += 2 * h * w * int(np.prod(layer.kernel_size)) * c_in * layer.filters
        elif isinstance(layer, keras.layers.Conv2D):
            h, w, _ = layer.output.shape[1:]
            total += 2 * h * w * int(np.prod(layer.kernel.shape[:3])) * layer.filters
    return total


def training_flops(generator: keras.Model, discriminator: keras.Model) -> int:
    """Per training image: G forward + backward (3 G), D forward and backward on a real and
    a generated image for D's loss (2 x 3 D), and D's input gradients for G's loss (1 D: its
    weight gradients there are never used, and TensorFlow prunes them; docs/speed.md). The
    lazy R1 penalty's passes (every ``r1_interval`` steps) are not counted."""
    return 3 * forward_flops(generator) + 7 * forward_flops(discriminator)


def tutorial_step(config: Config, image_shape: tuple[int, int, int], batch: int, fused_batch_norm: bool = False):
    """The TensorFlow DCGAN tutorial's networks (as built for ``config.model``), optimizers
    and ``@tf.function`` train step, as published: fp32, Adam(1e-4) for both networks, and
    Keras' own ``BatchNormalization`` unless ``fused_batch_norm`` (the product's layer)."""
    keras.mixed_precision.set_dtype_policy("float32")
    generator, discriminator = models.build(config.model, image_shape, [-1.0, 1.0])
    if not fused_batch_norm:
        generator, discriminator = standard_copy(generator), standard_copy(discriminator)
    cross_entropy = keras.losses.BinaryCrossentropy(from_logits=config.model.d_output == "logits")
    generator_optimizer, discriminator_optimizer = keras.optimizers.Adam(1e-4), keras.optimizers.Adam(1e-4)
    noise_dim = config.model.latent_dim

    @tf.function
    def train_step(images):
        noise = tf.random.normal([batch, noise_dim])
        with tf.GradientTape() as gen_tape, tf.GradientTape() as disc_tape:
            generated_images = generator(noise, training=True)
            real_output = discriminator(images, training=True)
            fake_output = discriminator(generated_images, training=True)
            gen_loss = cross_entropy(tf.ones_like(fake_output), fake_output)
            disc_loss = cross_entropy(tf.ones_like(real_output), real_output) + cross_entropy(
                tf.zeros_like(fake_output), fake_output
            )
        gradients_of_generator = gen_tape.gradient(gen_loss, generator.trainable_variables)
        gradients_of_discriminator = disc_tape.gradient(disc_loss, discriminator.trainable_variables)
        generator_optimizer.apply_gradients(zip(gradients_of_generator, generator.trainable_variables))
        discriminator_optimizer.apply_gradients(zip(gradients_of_discriminator, discriminator.trainable_variables))

    return generator, train_step


def tutorial_loop(
    config: Config, images: np.ndarray, batch: int, steps: int, epochs: int, fused_batch_norm: bool = False
) -> list[float]:
    """Images/s of the tutorial's training loop over its own input pipeline, per epoch."""
    generator, train_step = tutorial_step(config, images.shape[1:], batch, fused_batch_norm)
    dataset = tf.data.Dataset.from_tensor_slices(images).shuffle(len(images)).batch(batch, drop_remainder=True).repeat()
    batches = iter(dataset)
    rates = []
    for epoch in range(epochs + 1):  # the first epoch (tracing) is warm-up
        started = time.perf_counter()
        for _ in range(steps):
            train_step(next(batches))
        generator.trainable_variables[0].numpy()  # wait for the last step
        if epoch:
            rates.append(steps * batch / (time.perf_counter() - started))
    return rates


def product_path(
    config: Config, workdir: Path, steps: int, epochs: int, precision: str, metrics_every: int = 1
) -> tuple[list[float], float]:
    """Per-epoch images/s of the real ``train`` (warm-up epoch excluded) and the seconds
    per epoch spent outside training steps, with in-training scores every ``metrics_every``
    epochs (0: none)."""
    label = f"{precision}-metrics{metrics_every}"
    config.paths.models_dir, config.paths.reports_dir = (
        str(workdir / f"models-{label}"),
        str(workdir / f"reports-{label}"),
    )
    config.train.iterations, config.train.interval, config.train.precision = (epochs + 1) * steps, steps, precision
    config.train.resume, config.metrics.every = "never", metrics_every
    final = train(config)
    timed = history(Path(config.paths.reports_dir) / "train_history.csv")[1:]
    keras.backend.clear_session()
    step_seconds = sum(row["epoch_seconds"] for row in timed)
    return [row["images_per_sec"] for row in timed], final["overhead"] / (1 - final["overhead"]) * step_seconds / len(
        timed
    )


def history(path: Path) -> list[dict]:
    """The rows of a run's ``train_history.csv`` (empty cells left out)."""
    header, *rows = path.read_text().splitlines()
    keys = header.split(",")
    return [{k: float(v) for k, v in zip(keys, row.split(",")) if v} for row in rows]


def compute_only(
    config: Config, manifest: dict, images: np.ndarray, batch: int, steps: int, precision: str, peak: dict | None
) -> tuple[float, tuple[float, list] | None]:
    """Images/s of the product's step on one batch held in memory (no input pipeline at all),
    and, given this machine's ``peak`` and bandwidth, the step's roofline bound (``step_roofline``)."""
    config.train.precision = precision
    gan = build_gan(config, manifest, total_steps=2 * steps)
    constant = tf.data.Dataset.from_tensors(tf.constant(images[:batch])).repeat()
    # One fit, the first epoch as warm-up: a second `fit` call ran up to 2x slower here.
    throughput = Throughput(batch)
    gan.fit(constant, epochs=2, steps_per_epoch=steps, shuffle=False, verbose=0, callbacks=[throughput])
    roofline = step_roofline(gan, batch, tuple(manifest["image_shape"]), peak, peak["bandwidth"]) if peak else None
    keras.backend.clear_session()
    return steps * batch / throughput.step_seconds[1], roofline


def pipeline_rate(prepared: Path, manifest: dict, batch: int, steps: int) -> float:
    """Images/s the training input pipeline delivers on its own."""
    batches = iter(training_dataset(prepared, manifest, batch, 0, 60000, 0))
    for _ in range(steps):  # warm-up, fills the cache
        next(batches)
    started = time.perf_counter()
    for _ in range(steps * 4):
        next(batches)
    return steps * 4 * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="steps per timed epoch (28px model)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after one warm-up epoch")
    parser.add_argument("--skip-rgb", action="store_true", help="only the 28px tutorial architecture")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every setup, e.g. data.limit=2048")
    args = parser.parse_args()
    wanted = [("28px tutorial model (data=mnist model=dcgan_mnist)", "model=dcgan_mnist", 256, args.steps)]
    if not args.skip_rgb:
        wanted.append(
            ("128px RGB model (experiment=faces128_rmsprop)", "experiment=faces128_rmsprop", 16, args.steps * 4)
        )
    # Each setup's config composed (a mistake refused) before any work folder or measurement.
    setups = [
        (title, composed([choice, f"train.batch_size={batch}", *args.overrides]), batch, steps)
        for title, choice, batch, steps in wanted
    ]
    workdir = Path(tempfile.mkdtemp(prefix="dcgan-bench-"))
    print(
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, CPUs: "
        f"{len(tf.config.list_physical_devices('CPU'))} device(s), "
        f"GPUs: {len(tf.config.list_physical_devices('GPU'))}; work dir {workdir}",
        flush=True,
    )

    peak = {"float32": matmul_peak(tf.float32), "bfloat16": matmul_peak(tf.bfloat16)}
    print(f"matmul peak: float32 {peak['float32']:.0f} GFLOP/s, bfloat16 {peak['bfloat16']:.0f} GFLOP/s", flush=True)
    peak["bandwidth"] = memory_bandwidth()
    print(f"memory bandwidth (STREAM-style copy): {peak['bandwidth']:.1f} GB/s", flush=True)
    chosen = resolve_precision("auto")
    print(f"train.precision=auto: {chosen.describe()} (cache: {cache_file()})", flush=True)

    summary = {}
    for title, setup, batch, steps in setups:
        config = configure(workdir, setup)
        prepared, manifest = prepared_dataset(config.data, config.paths)
        # The setup's own cadence, before the timed runs set theirs.
        epoch_steps = Schedule.of(config.train, manifest["splits"]["train"]["count"], prepared).steps_per_epoch
        metrics_every = config.metrics.every
        images, _ = load_images(prepared, manifest, "train", 60000)
        generator, discriminator = models.build(
            config.model, tuple(manifest["image_shape"]), manifest["normalization"]["range"]
        )
        flops = training_flops(generator, discriminator)
        print(
            f"\n== {title}, batch {batch}: {flops / 1e9:.3f} GFLOP per training image (forward + backward)", flush=True
        )

        reference = tutorial_loop(config, images, batch, steps, args.epochs)
        print(f"(a) tutorial loop, fp32      {spread(reference)}", flush=True)
        if any(isinstance(layer, FusedBatchNormalization) for layer in generator.layers + discriminator.layers):
            # Not the reference: how much of (b)'s lead is the fused batch-norm kernel alone.
            fused = tutorial_loop(config, images, batch, steps, args.epochs, fused_batch_norm=True)
            print(
                f"    same loop with the product's fused batch norm {spread(fused)}  ratio to (a) "
                f"{statistics.median(fused) / statistics.median(reference):.2f}",
                flush=True,
            )
        keras.backend.clear_session()
        results = {}
        try:
            for precision in ("fp32", "auto"):
                results[precision] = product_path(config, workdir, steps, args.epochs, precision)
                rates = results[precision][0]
                ratio = statistics.median(rates) / statistics.median(reference)
                print(f"(b) product path, {precision:<10} {spread(rates)}  ratio b/a {ratio:.2f}", flush=True)
            # Only for the overhead: the same run without in-training scores.
            unscored_overhead = product_path(config, workdir, steps, args.epochs, "auto", metrics_every=0)[1]
        except TrainingDiverged as exc:  # a figure for a run that diverged would mean nothing
            keras.backend.clear_session()
            print(f"(b) product path diverged: {exc}", flush=True)
            continue
        rates, scored_overhead = results["auto"]
        achieved = statistics.median(rates) * flops / 1e9
        faster_peak = max(("float32", "bfloat16"), key=peak.get)
        step_seconds = batch / statistics.median(rates)
        scoring = max(0.0, scored_overhead - unscored_overhead)
        overhead_seconds = unscored_overhead + (scoring / metrics_every if metrics_every else 0.0)
        per_epoch = overhead_seconds / (overhead_seconds + epoch_steps * step_seconds)
        compute, (bound, ops) = compute_only(config, manifest, images, batch, steps, "auto", peak)
        waiting = max(0.0, 1 - statistics.median(rates) / compute)
        pipeline = pipeline_rate(prepared, manifest, batch, steps)
        print(
            f"    achieved {achieved:.0f} GFLOP/s = {achieved / peak[faster_peak]:.2f} of the faster "
            f"({faster_peak}) matmul peak; "
            f"auto chose {chosen.describe()}"
        )
        print(
            f"    input pipeline alone {pipeline:.0f} img/s = {pipeline / statistics.median(rates):.1f}x the "
            "training rate; "
            f"step without any input pipeline {compute:.1f} img/s -> {waiting:.1%} of a step waiting for input"
        )
        # What the product's step does that the tutorial's does not: the lazy R1 penalty and the weight EMA.
        plain_config = configure(workdir, setup)
        plain_config.train.r1_gamma, plain_config.train.ema_decay = 0.0, 0.0
        plain = compute_only(plain_config, manifest, images, batch, steps, "auto", None)[0]
        print(f"    the same step without R1 and EMA {plain:.1f} img/s: they cost {1 - compute / plain:.1%} of it")
        compute_bound = sum(op[5] for op in ops)
        print(
            f"    roofline bound of a step: {bound:.3f} s (compute-bound ops {compute_bound:.3f} s, "
            f"memory-bound ops {bound - compute_bound:.3f} s); the step alone takes {batch / compute:.3f} s = "
            f"{batch / compute / bound:.2f}x it, with the input pipeline {step_seconds:.3f} s = "
            f"{step_seconds / bound:.2f}x; largest shares of the bound:"
        )
        for name, count, gflop, megabytes, seconds, compute_bound in ops[:6]:
            print(
                f"      {name:<22} {count:4d} ops {gflop:8.2f} GFLOP {megabytes:8.1f} MB  {seconds:.3f} s "
                f"({'compute' if compute_bound > seconds / 2 else 'memory'}-bound)"
            )
        cadence = f"every {metrics_every} epoch(s)" if metrics_every else "never"
        print(
            f"    per-epoch overhead: grid, MLflow and checkpoint {unscored_overhead:.1f} s, in-training scores "
            f"{scoring:.1f} s; "
            f"with scores {cadence} as configured = {per_epoch:.1%} of a {epoch_steps}-step epoch",
            flush=True,
        )
        summary.setdefault("speedup", statistics.median(rates) / statistics.median(reference))
        summary.setdefault("fraction", achieved / peak[faster_peak])
        summary.setdefault("roofline", batch / compute / bound)
    print(
        f"speedup_vs_tutorial={summary['speedup']:.2f} fraction_of_peak={summary['fraction']:.2f} "
        f"step_vs_roofline={summary['roofline']:.2f} precision={chosen.policy}"
    )


if __name__ == "__main__":
    with user_errors_in_one_line():
        main()
