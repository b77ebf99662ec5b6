"""Time to quality, side by side in one run on one machine: the minutes the default
configuration's training takes until its in-training FID (2,000 samples, the domain
classifier's space) first reaches ``--target``, and the best FID the TensorFlow tutorial's
loop as published reaches in the same minutes.

    python benchmarks/time_to_quality.py [--target 10] [--stop-at-target] [overrides ...]

(a) ``python src/train.py`` with the default config (plus ``overrides``) as a user runs it,
    in a subprocess; its minutes are wall-clock from the process start to the moment the
    epoch's row (and FID) is written, so they include start-up, tracing and the in-training
    scoring. ``--stop-at-target`` stops it there (SIGTERM: a clean checkpoint), else it
    runs its whole configured length. The prepared data and the domain classifier are
    made before the clock starts (they are cached and shared by both).
(b) the tutorial loop for as many minutes of training as (a) needed (its scoring after each
    epoch is not counted against it), stopping mid-epoch at the budget.
If (a) never reaches the target, (b) gets (a)'s whole run and the output says so.

The last line is machine-readable:
``minutes_to_target=... default_fid=... tutorial_best_fid_same_minutes=... precision=...``.
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

from dcgan import quality
from dcgan.config import Config
from dcgan.data.pipeline import load_images
from dcgan.data.prepare import prepared_dataset
from dcgan.precision import resolve_precision


def run_default(
    config: Config, workdir: Path, target: float, stop_at_target: bool, overrides: list[str]
) -> tuple[list[tuple[float, dict]], float | None]:
    """(minutes since start, history row) per epoch of ``src/train.py``, and the minutes at
    which FID first reached ``target`` (None if it never did)."""
    command = [
        sys.executable,
        str(REPO / "src/train.py"),
        *overrides,
        "train.resume=never",
        *(f"paths.{key}={getattr(config.paths, key)}" for key in ("raw_dir", "prepared_dir", "classifier_dir")),
        f"paths.models_dir={workdir / 'models'}",
        f"paths.reports_dir={workdir / 'reports'}",
        f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}",
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
                minutes = (time.perf_counter() - started) / 60
                rows.append((minutes, row))
                fid = row.get("fid", float("nan"))
                print(
                    f"default epoch {int(row['epoch'])}: {minutes:.1f} min, FID (2,000 samples) {fid:.2f}", flush=True
                )
                if reached is None and row.get("fid", float("inf")) <= target:
                    reached = minutes
                    if stop_at_target:
                        process.send_signal(signal.SIGTERM)
    if process.returncode not in (0, 128 + signal.SIGTERM, -signal.SIGTERM):
        raise SystemExit(f"the default training failed ({process.returncode}); see {workdir / 'train.log'}")
    return rows, reached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=10.0, help="FID to reach (2,000 samples)")
    parser.add_argument("--stop-at-target", action="store_true", help="stop the default run once it reaches the target")
    parser.add_argument("overrides", nargs="*", help="config overrides for the default run, e.g. train.epochs=3")
    args = parser.parse_intermixed_args()
    workdir = as_project(Path(tempfile.mkdtemp(prefix="dcgan-ttq-")))

    config = configure(workdir, args.overrides)
    prepared, manifest = prepared_dataset(config.data, config.paths)
    # Trains and caches the classifier if missing.
    space = quality.feature_space(config.metrics, config.paths.classifier_dir, prepared, manifest)
    precision = resolve_precision(config.train.precision)  # measured now if not cached, off (a)'s clock
    print(f"work dir {workdir}; default run's precision: {precision.describe()}", flush=True)

    rows, reached = run_default(config, workdir, args.target, args.stop_at_target, args.overrides)
    if not rows:
        raise SystemExit("the default training wrote no epochs")
    budget = reached if reached is not None else rows[-1][0]
    default_fid = next((row["fid"] for minutes, row in rows if minutes == budget), rows[-1][1].get("fid"))

    tutorial = configure(workdir, ["model=dcgan_mnist", *args.overrides])  # the tutorial's own networks
    progress = quality.Scorer(space, tutorial.metrics, prepared, manifest, 2000)
    images, _ = load_images(prepared, manifest, "train", manifest["splits"]["train"]["count"])
    noise = np.random.default_rng(0).standard_normal((2000, tutorial.model.latent_dim)).astype(np.float32)
    _, curve = tutorial_curve(tutorial, manifest, images, progress, noise, budget_seconds=budget * 60)
    best = min(fid for _, _, fid in curve)

    if reached is None:
        print(
            f"\nthe default run did not reach FID <= {args.target} in its {budget:.1f} min (last FID "
            f"{default_fid:.2f}); "
            f"the tutorial loop in the same minutes: best FID {best:.2f}"
        )
    else:
        print(
            f"\ndefault configuration: FID {default_fid:.2f} <= {args.target} after {reached:.1f} min; "
            f"tutorial loop in the same {reached:.1f} min: best FID {best:.2f} ({best / default_fid:.1f}x the "
            "default's)"
        )
    print(
        f"minutes_to_target={reached if reached is not None else float('nan'):.1f} default_fid={default_fid:.2f} "
        f"tutorial_best_fid_same_minutes={best:.2f} precision={precision.policy}"
    )


if __name__ == "__main__":
    main()
