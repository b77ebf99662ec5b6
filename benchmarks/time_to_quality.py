"""Time to quality, side by side in one run on one machine: the minutes of training the
default configuration needs until its FID (``--samples`` generated images against as many
test images, in the domain classifier's space; 10,000 by default, as ``evaluate`` scores)
first reaches ``--target``, and the best FID the TensorFlow tutorial's loop as published
reaches in the same minutes of training.

    python benchmarks/time_to_quality.py [--target 5] [--samples 10000] [--stop-at-target]
        [--recipe LABEL=OVERRIDES ...] [--plot PATH] [overrides ...]

(a) ``python src/train.py`` with the default config (plus ``overrides``) as a user runs it,
    in a subprocess, scoring every epoch on ``--samples`` samples; its minutes are training
    minutes (the summed ``epoch_seconds``: start-up and the epoch-end scoring, which a run
    with fewer scoring samples makes cheap, are not counted), with the wall-clock minutes
    beside them. ``--stop-at-target`` stops it there (SIGTERM: a clean checkpoint), else it
    runs its whole configured length. The prepared data and the domain classifier are made
    before any clock starts (they are cached and shared by all runs).
(b) each ``--recipe`` (e.g. ``mnist_best=experiment=mnist_best``; space-separated overrides),
    run as (a), for the plot.
(c) the tutorial loop for as many minutes of training as (a) needed (its scoring after each
    epoch is not counted against it), stopping mid-epoch at the budget.
If (a) never reaches the target, (c) gets (a)'s whole run and the output says so.
``--plot`` draws every run's FID against its training minutes in one figure.

The last line is machine-readable: ``minutes_to_target=... default_fid=...
tutorial_best_fid_same_minutes=... samples=... precision=...``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from projects import as_project
from quality import tutorial_curve
from throughput import REPO, configure

from dcgan import quality, viz
from dcgan.cli import composed, user_errors_in_one_line
from dcgan.config import Config
from dcgan.data.pipeline import load_images
from dcgan.data.prepare import prepared_dataset
from dcgan.files import check_writable
from dcgan.precision import resolve_precision


def run_product(
    label: str, config: Config, workdir: Path, target: float, stop_at_target: bool, overrides: list[str]
) -> tuple[list[tuple[float, dict]], float | None]:
    """(training minutes, history row) per epoch of ``src/train.py`` with ``overrides``, in
    ``workdir``, and the training minutes at which FID first reached ``target`` (None if it
    never did)."""
    workdir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        str(REPO / "src/train.py"),
        *overrides,
        "train.resume=never",
        f"metrics.train_samples={config.metrics.train_samples}",
        *(f"paths.{key}={getattr(config.paths, key)}" for key in ("raw_dir", "prepared_dir", "classifier_dir")),
        f"paths.models_dir={workdir / 'models'}",
        f"paths.reports_dir={workdir / 'reports'}",
        f"tracking.uri={config.tracking.uri}",
    ]
    state = workdir / "models/checkpoints/state.json"  # its history grows by a row per committed epoch
    rows: list[tuple[float, dict]] = []
    reached = None
    started = time.perf_counter()
    with open(workdir / "train.log", "w") as log:
        process = subprocess.Popen(
            command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        while process.poll() is None:
            time.sleep(1.0)
            if reached is not None and stop_at_target:
                continue  # stopping: epochs it may still finish do not count
            done = json.loads(state.read_text())["history"] if state.is_file() else []
            for row in done[len(rows) :]:
                minutes = (rows[-1][0] if rows else 0.0) + row["epoch_seconds"] / 60
                rows.append((minutes, row))
                fid = row.get("fid", float("nan"))
                print(
                    f"{label} epoch {int(row['epoch'])}: {minutes:.1f} min of training "
                    f"({(time.perf_counter() - started) / 60:.1f} min wall), FID {fid:.2f}",
                    flush=True,
                )
                if reached is None and fid <= target:
                    reached = minutes
                    if stop_at_target:
                        process.send_signal(signal.SIGTERM)
    if process.returncode not in (0, 128 + signal.SIGTERM, -signal.SIGTERM):
        raise SystemExit(f"the {label} training failed ({process.returncode}); see {workdir / 'train.log'}")
    if not rows:
        raise SystemExit(f"the {label} training wrote no epochs; see {workdir / 'train.log'}")
    return rows, reached


def recipe(text: str) -> tuple[str, list[str]]:
    label, separator, overrides = text.partition("=")
    if not separator or not overrides.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL=OVERRIDES, e.g. mnist_best=experiment=mnist_best")
    return label, overrides.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=5.0, help="FID to reach")
    parser.add_argument("--samples", type=int, default=10000, help="samples per FID (10,000: as evaluate scores)")
    parser.add_argument("--stop-at-target", action="store_true", help="stop the default run once it reaches the target")
    parser.add_argument("--recipe", type=recipe, action="append", default=[], help="LABEL=OVERRIDES, another run")
    parser.add_argument("--plot", type=Path, help="a PNG of every run's FID against its training minutes")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. train.epochs=3")
    args = parser.parse_intermixed_args()
    # Refused now, not after the runs before them have trained.
    check_writable(*([args.plot.parent] if args.plot else []))
    setup = composed([*args.overrides, f"metrics.train_samples={args.samples}"])
    tutorial_setup = composed(["model=dcgan_mnist", *args.overrides])  # the tutorial's own networks
    for _, overrides in args.recipe:
        composed([*args.overrides, *overrides])
    workdir = as_project(Path(tempfile.mkdtemp(prefix="dcgan-ttq-")))

    config = configure(workdir, setup)
    prepared, manifest = prepared_dataset(config.data, config.paths)
    # Trains and caches the classifier if missing.
    space = quality.feature_space(config.metrics, config.paths.classifier_dir, prepared, manifest)
    precision = resolve_precision(config.train.precision)  # measured now if not cached, off (a)'s clock
    print(f"work dir {workdir}; precision: {precision.describe()}; FID on {args.samples:,} samples", flush=True)

    rows, reached = run_product(
        "default", config, workdir / "default", args.target, args.stop_at_target, args.overrides
    )
    curves = {"default": ([m for m, _ in rows], [row.get("fid", float("nan")) for _, row in rows])}
    for label, overrides in args.recipe:
        recipe_rows, _ = run_product(label, config, workdir / label, args.target, False, [*args.overrides, *overrides])
        curves[label] = ([m for m, _ in recipe_rows], [row.get("fid", float("nan")) for _, row in recipe_rows])
    budget = reached if reached is not None else rows[-1][0]
    default_fid = next((row["fid"] for minutes, row in rows if minutes == budget), rows[-1][1].get("fid"))

    tutorial = configure(workdir, tutorial_setup)
    progress = quality.Scorer(space, tutorial.metrics, prepared, manifest, args.samples)
    images, _ = load_images(prepared, manifest, "train", manifest["splits"]["train"]["count"])
    noise = np.random.default_rng(0).standard_normal((args.samples, tutorial.model.latent_dim)).astype(np.float32)
    _, curve = tutorial_curve(tutorial, manifest, images, progress, noise, budget_seconds=budget * 60)
    best = min(fid for _, _, fid in curve)
    curves["tutorial loop"] = ([seconds / 60 for _, seconds, _ in curve], [fid for _, _, fid in curve])

    if reached is None:
        print(
            f"\nthe default run did not reach FID <= {args.target} in its {budget:.1f} min of training (last FID "
            f"{default_fid:.2f}); "
            f"the tutorial loop in the same minutes: best FID {best:.2f}"
        )
    else:
        print(
            f"\ndefault configuration: FID {default_fid:.2f} <= {args.target} after {reached:.1f} min of training; "
            f"tutorial loop in the same {reached:.1f} min: best FID {best:.2f} ({best / default_fid:.1f}x the "
            "default's)"
        )
    if args.plot:
        viz.fid_curves_figure(args.plot, f"MNIST, FID on {args.samples:,} samples (domain-classifier features)", curves)
        print(f"wrote {args.plot}")
    print(
        f"minutes_to_target={reached if reached is not None else float('nan'):.1f} default_fid={default_fid:.2f} "
        f"tutorial_best_fid_same_minutes={best:.2f} samples={args.samples} precision={precision.policy}"
    )


if __name__ == "__main__":
    with user_errors_in_one_line():
        main()
