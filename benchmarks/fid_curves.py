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

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_curve(path: Path, by_epoch: bool) -> tuple[list[float], list[float]]:
    if not path.is_file():
        raise SystemExit(f"{path}: no such file (expected a run's reports/train_history.csv)")
    with open(path, newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get("fid")]
    if not rows:
        raise SystemExit(f"{path}: no rows with an fid column")
    if by_epoch:
        return [float(row["epoch"]) for row in rows], [float(row["fid"]) for row in rows]
    minutes, elapsed = [], 0.0
    for row in rows:
        elapsed += float(row["epoch_seconds"]) / 60
        minutes.append(elapsed)
    return minutes, [float(row["fid"]) for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="the PNG to write")
    parser.add_argument("runs", nargs="+", help="label=path/to/train_history.csv")
    parser.add_argument("--epochs", action="store_true", help="epochs on the x axis instead of training minutes")
    parser.add_argument("--title", default="MNIST, in-training FID (domain-classifier features)")
    args = parser.parse_args()

    figure, axes = plt.subplots(figsize=(7.5, 4.2), dpi=100)
    for run in args.runs:
        label, separator, path = run.partition("=")
        if not separator:
            raise SystemExit(f"{run!r}: expected label=path/to/train_history.csv")
        axes.plot(*read_curve(Path(path), args.epochs), marker="o", label=label)
    axes.set_yscale("log")
    axes.set_xlabel("epoch" if args.epochs else "training minutes (epoch-end scoring excluded)")
    axes.set_ylabel("FID, in-training sample")
    axes.set_title(args.title, fontsize=10)
    axes.grid(True, axis="x", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
