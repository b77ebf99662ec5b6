"""Multi-worker training on one machine, side by side in one run: images/s of one process on
all cores against ``train.strategy=multi_worker`` with one worker process per core (over
127.0.0.1), and one process on one core at the per-replica batch (the same work per core
without the all-reduce: the difference is what the all-reduce and the workers' lockstep
cost a step). Also the bytes each step all-reduces, per network.

    python benchmarks/multi_worker.py [--steps 150] [--batch-size 64] [--repeats 2]

Timings are of the second of two equal fit() calls (the first traces and warms up); each
configuration runs ``--repeats`` times, in turn with the others, and the median is printed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from projects import REPO, as_project

MNIST = ["data=mnist", "data.shards=2", "metrics.every=0", "train.resume=never", "tracking.system_metrics=false"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def host_class() -> str:
    lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return (
        ", ".join(
            f"{key.strip()} {fields[key].strip()}" for key in ("Model name", "CPU family", "Model") if key in fields
        )
        + f", {os.cpu_count()} cores ({platform.machine()})"
    )


def train(folder: Path, overrides: list[str], workers: int = 1) -> float:
    """Run one training (``workers`` processes of one multi_worker training when > 1); the
    images/s of its second epoch."""
    command = [sys.executable, str(REPO / "src/train.py"), *MNIST, *overrides]
    ports = [free_port() for _ in range(workers)]
    processes = []
    for index in range(workers):
        env = dict(os.environ)
        if workers > 1:
            cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
            env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        processes.append(
            subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        )
    for process in processes:
        _, err = process.communicate()
        if process.returncode:
            sys.exit(f"training failed ({' '.join(overrides)}):\n{err[-2000:]}")
    with open(folder / "reports/train_history.csv") as handle:
        return float(list(csv.DictReader(handle))[1]["images_per_sec"])


def all_reduced_bytes(batch_size: int) -> list[tuple[str, int, int]]:
    """(network, gradient bytes, synced-statistics bytes) all-reduced per step: trainable
    weights' gradients, and non-trainable variables averaged on every write (batch norm's
    moving statistics)."""
    from dcgan.cli import composed
    from dcgan.commands.train import build_gan

    config = composed([f"train.batch_size={batch_size}", "train.precision=fp32"])
    gan = build_gan(config, {"image_shape": [28, 28, 1], "normalization": {"range": [-1.0, 1.0]}}, total_steps=10)
    rows = []
    for network in (gan.generator, gan.discriminator):
        gradients = sum(4 * int(w.numpy().size) for w in network.trainable_weights)
        synced = sum(w.numpy().nbytes for w in network.non_trainable_weights if w.aggregation in ("mean", "sum"))
        rows.append((network.name, gradients, synced))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150, help="steps per timed epoch")
    parser.add_argument("--batch-size", type=int, default=64, help="the global batch")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    schedule = [f"train.iterations={2 * args.steps}", f"train.interval={args.steps}"]
    half = args.batch_size // 2
    configurations = {
        f"1 process x 2 threads, batch {args.batch_size}": (
            [*schedule, f"train.batch_size={args.batch_size}", "train.threads=2"],
            1,
        ),
        f"2 workers x 1 thread, global batch {args.batch_size}": (
            [*schedule, f"train.batch_size={args.batch_size}", "train.threads=1", "train.strategy=multi_worker"],
            2,
        ),
        f"1 process x 1 thread, batch {half} (one replica's work)": (
            [*schedule, f"train.batch_size={half}", "train.threads=1"],
            1,
        ),
    }
    with tempfile.TemporaryDirectory(prefix="multi-worker-bench-") as scratch:
        folder = as_project(Path(scratch))
        subprocess.run(
            [sys.executable, str(REPO / "src/prepare.py"), *MNIST], cwd=folder, check=True, capture_output=True
        )
        figures: dict[str, list[float]] = {name: [] for name in configurations}
        for _ in range(args.repeats):
            for name, (overrides, workers) in configurations.items():
                figures[name].append(train(folder, overrides, workers))
    print(f"host: {host_class()}")
    print(f"{args.steps} timed steps per run, median of {args.repeats} runs each, images/s of the global batch")
    print("| configuration | images/s (runs) | ms per step |")
    print("|---|---|---|")
    step_ms = {}
    for name, values in figures.items():
        batch = half if "one replica" in name else args.batch_size
        median = statistics.median(values)
        step_ms[name] = 1000 * batch / median
        print(f"| {name} | {median:.0f} ({', '.join(f'{v:.0f}' for v in values)}) | {step_ms[name]:.1f} |")
    names = list(figures)
    ratio = statistics.median(figures[names[1]]) / statistics.median(figures[names[0]])
    print(f"2 workers / 1 process x 2 threads: {ratio:.2f}x")
    print(f"all-reduce and lockstep per step: {step_ms[names[1]] - step_ms[names[2]]:.1f} ms")
    print("| network | gradients all-reduced per step | batch-norm statistics per step |")
    print("|---|---|---|")
    for network, gradients, synced in all_reduced_bytes(args.batch_size):
        print(f"| {network} | {gradients / 1e6:.2f} MB | {synced / 1e3:.1f} kB |")


if __name__ == "__main__":
    main()
