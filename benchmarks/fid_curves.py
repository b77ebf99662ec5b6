"""Draw the in-training FID of several runs in one figure (the FID curves in docs/results.md).

    python benchmarks/fid_curves.py docs/images/mnist_fid_per_epoch.png \
        "default=reports/train_history.csv" "other run=../other/reports/train_history.csv"

Each run is ``label=path`` to the ``train_history.csv`` its training wrote (one row per
epoch or checkpoint interval). The x axis is training minutes (the summed
``epoch_seconds``, which leave out the epoch-end scoring), or epochs with ``--epochs``
(for runs that shared the cores, whose minutes are not comparable).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from dcgan.viz import TRAINING_MINUTES, fid_curves_figure


def read_curve(path: Path, by_epoch: bool) -> tuple[list[float], list[float]]:
    if not path.is_file():
        raise SystemExit(f"{path}: no such file (expected a run's reports/train_history.csv)")
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    if not any(row.get("fid") for row in rows):
        raise SystemExit(f"{path}: no rows with an fid column")
    x, elapsed = [], 0.0
    for row in rows:  # every row's training time counts, scored or not
        elapsed += float(row["epoch_seconds"]) / 60
        x.append(float(row["epoch"]) if by_epoch else elapsed)
    return [v for v, row in zip(x, rows) if row.get("fid")], [float(row["fid"]) for row in rows if row.get("fid")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="the PNG to write")
    parser.add_argument("runs", nargs="+", help="label=path/to/train_history.csv")
    parser.add_argument("--epochs", action="store_true", help="epochs on the x axis instead of training minutes")
    parser.add_argument("--title", default="MNIST, in-training FID (domain-classifier features)")
    args = parser.parse_args()

    curves = {}
    for run in args.runs:
        label, separator, path = run.partition("=")
        if not separator:
            raise SystemExit(f"{run!r}: expected label=path/to/train_history.csv")
        curves[label] = read_curve(Path(path), args.epochs)
    fid_curves_figure(args.output, args.title, curves, "epoch" if args.epochs else TRAINING_MINUTES)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
