"""Entry point: `python src/tracking_server.py start|stop|status` (docs/team.md): a shared MLflow
tracking server on PostgreSQL, on 127.0.0.1, kept in a project-local folder."""

import argparse
import sys
from pathlib import Path

from dcgan import tracking_server
from dcgan.errors import UserError
from dcgan.project import enter_root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].removeprefix("Entry point: "))
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument(
        "--folder", type=Path, default=Path(".mlflow-server"), help="cluster, artifacts, password, logs"
    )
    parser.add_argument("--port", type=int, default=5000, help="the MLflow server's port")
    parser.add_argument("--db-port", type=int, default=5433, help="PostgreSQL's port")
    args = parser.parse_args()
    try:
        enter_root(sys.argv[0])
        if args.action == "start":
            uri = tracking_server.start(args.folder, args.port, args.db_port)
            print(tracking_server.status(args.folder))
            print(f"use it: export MLFLOW_TRACKING_URI={uri}   (or tracking.uri={uri})")
        elif args.action == "stop":
            tracking_server.stop(args.folder)
            print(tracking_server.status(args.folder))
        else:
            print(tracking_server.status(args.folder))
    except UserError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
