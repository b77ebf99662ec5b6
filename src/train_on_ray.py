"""Entry point: `python src/train_on_ray.py --workers N [--address HOST:6379] [overrides]`
(docs/distributed.md): one train.strategy=multi_worker training, its workers placed by Ray
Train on a Ray cluster (or on a Ray started on this machine)."""

import argparse
import sys
from pathlib import Path

from dcgan import multi_worker
from dcgan.errors import UserError
from dcgan.project import enter_root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1].strip())
    parser.add_argument("--workers", type=int, default=2, help="worker processes (Ray Train workers)")
    parser.add_argument("--cpus-per-worker", type=int, default=1, help="CPUs each asks Ray for (its train.threads)")
    parser.add_argument("--address", help="the cluster's head, HOST:6379; default: a Ray on this machine")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for src/train.py (e.g. train.epochs=3)")
    args = parser.parse_args()
    try:
        root = enter_root(sys.argv[0])
        train_script = Path(__file__).resolve().parent / "train.py"
        multi_worker.train_on_ray(train_script, root, args.overrides, args.workers, args.cpus_per_worker, args.address)
    except UserError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
