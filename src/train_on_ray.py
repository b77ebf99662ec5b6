"""Entry point: `python src/train_on_ray.py --workers N [--address HOST:6379] [overrides]`
(docs/distributed.md): one train.strategy=multi_worker training, its workers placed by Ray
Train on a Ray cluster (or on a Ray started on this machine)."""

import argparse
from pathlib import Path

from dcgan.cli import composed, launch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1].strip())
    parser.add_argument("--workers", type=int, default=2, help="worker processes (Ray Train workers)")
    parser.add_argument("--cpus-per-worker", type=int, default=1, help="CPUs each asks Ray for (its train.threads)")
    parser.add_argument("--address", help="the cluster's head, HOST:6379; default: a Ray on this machine")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for src/train.py (e.g. train.epochs=3)")
    args = parser.parse_args()
    overrides = [*args.overrides, "train.strategy=multi_worker", f"train.threads={args.cpus_per_worker}"]

    def on_ray() -> None:
        composed(overrides)  # a refused config is refused here, before Ray and TensorFlow start
        from dcgan import multi_worker

        train_script = Path(__file__).resolve().parent / "train.py"
        multi_worker.train_on_ray(train_script, Path.cwd(), overrides, args.workers, args.cpus_per_worker, args.address)

    launch(on_ray)


if __name__ == "__main__":
    main()
