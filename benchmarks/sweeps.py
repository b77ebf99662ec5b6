"""Sweeps, measured side by side in one run on one machine.

    python benchmarks/sweeps.py launchers [--jobs 4] [overrides ...]
    python benchmarks/sweeps.py search [--trials 8] [overrides ...]

``launchers``: the wall time of the same ``--jobs``-job sweep of the smoke profile
(``debug=tiny``; two optimizers x seeds) run by Hydra's basic launcher (one job after
another, each on all cores), by the joblib launcher with two jobs at once (each on half
the cores, ``train.threads``) and by the Ray launcher on a two-node Ray cluster started on
loopback (half the cores per node, one job per node). Last line:
``basic_s=... parallel_s=... ray_s=... speedup=... ray_speedup=...``.

``search``: the FID search (``hparams_search=fid_optuna``) of ``--trials`` trials, once
with pruning and once without (every trial runs to the end), same sampler seed: trials
finished and pruned, the best FID, the minutes. Last line:
``pruned_minutes=... unpruned_minutes=... pruned_best_fid=... unpruned_best_fid=...``.

Both run ``src/train.py -m`` as a user does, in a temp folder, on data prepared (and a
domain classifier trained) before the clocks start.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import optuna
from projects import as_project

from dcgan import search

REPO = Path(__file__).resolve().parents[1]


def train(workdir: Path, *overrides: str) -> float:
    """Seconds ``python src/train.py`` takes with ``overrides`` in ``workdir``."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(REPO / "src/train.py"), *overrides], cwd=workdir, capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(f"train {' '.join(overrides)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def prepare(workdir: Path, overrides: list[str]) -> None:
    """The data and the domain classifier, made before the clocks start."""
    for stage in ("prepare", "classifier"):
        result = subprocess.run(
            [sys.executable, str(REPO / f"src/{stage}.py"), *overrides], cwd=workdir, capture_output=True, text=True
        )
        if result.returncode != 0:
            sys.exit(f"{stage} failed:\n{result.stderr[-3000:]}")


# Machine-wide whatever TMPDIR says: the lock must be one for every process here, and Ray's
# socket paths must fit in 107 characters.
MACHINE_TMP = Path("/tmp")


@contextmanager
def ray_to_itself() -> Iterator[None]:
    """This machine's Ray to the caller alone until it leaves: a loopback cluster's ``ray
    stop`` ends every Ray process here, another's ``ray.init()`` of its own included."""
    with open(MACHINE_TMP / "dcgan-loopback-ray.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextmanager
def loopback_ray_cluster(nodes: int, cpus_per_node: int) -> Iterator[str]:
    """A Ray cluster of ``nodes`` nodes on 127.0.0.1, each a separate ``ray start`` (the head
    first), stopped (``ray stop``: every Ray process of this machine) on exit; yields the
    head's address for ``hydra.launcher.address``. It waits for any other Ray of the suite's
    or the benchmarks' to end first (``ray_to_itself``)."""
    with ray_to_itself():
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        address = f"127.0.0.1:{port}"
        ray = [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={cpus_per_node}",
            "--object-store-memory=100000000",
            "--disable-usage-stats",
        ]
        session = tempfile.mkdtemp(prefix="ray", dir=MACHINE_TMP)
        head = [
            *ray,
            "--head",
            f"--port={port}",
            "--include-dashboard=false",
            f"--temp-dir={session}",
        ]
        # Without token authentication: a token in ~/.ray (which a `ray.init()` of its own writes)
        # turns it on for the head, and the worker nodes would then need it too.
        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        try:
            for command in [head] + [[*ray, f"--address={address}"]] * (nodes - 1):
                started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
                if started.returncode != 0:
                    raise RuntimeError(f"{' '.join(command)} failed:\n{started.stderr[-2000:]}")
            yield address
        finally:
            subprocess.run([ray[0], "stop", "--force"], capture_output=True, timeout=120)
            shutil.rmtree(session, ignore_errors=True)


def launchers(jobs: int, overrides: list[str]) -> None:
    seeds = ",".join(str(seed) for seed in range(1, jobs // 2 + 1))
    sweep = ["-m", "debug=tiny", *overrides, "optimizer=adam,rmsprop", f"train.seed={seeds}"]
    half = max(1, len(os.sched_getaffinity(0)) // 2)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = as_project(Path(tmp))
        prepare(workdir, ["debug=tiny", *overrides])
        basic = train(workdir, *sweep)
        print(f"basic launcher, {jobs} jobs one after another: {basic:.1f} s", flush=True)
        parallel = train(workdir, *sweep, "hydra/launcher=parallel", "hydra.launcher.n_jobs=2")
        print(f"joblib launcher, 2 jobs at a time:            {parallel:.1f} s", flush=True)
        with loopback_ray_cluster(nodes=2, cpus_per_node=half) as address:
            on_ray = train(
                workdir,
                *sweep,
                "hydra/launcher=ray",
                f"hydra.launcher.address={address}",
                f"hydra.launcher.num_cpus={half}",
            )
        print(f"ray launcher, 2-node loopback cluster:        {on_ray:.1f} s", flush=True)
    print(
        f"basic_s={basic:.1f} parallel_s={parallel:.1f} ray_s={on_ray:.1f} speedup={basic / parallel:.2f} "
        f"ray_speedup={basic / on_ray:.2f}"
    )


def run_search(workdir: Path, name: str, trials: int, prune: bool, overrides: list[str]) -> tuple[float, optuna.Study]:
    journal = workdir / f"{name}.journal"
    # Without pruning: every trial counts as a start-up trial, which the pruner never stops.
    startup = 2 if prune else trials
    minutes = (
        train(
            workdir,
            "-m",
            "hparams_search=fid_optuna",
            *overrides,
            f"hydra.sweeper.study_name={name}",
            f"hydra.sweeper.storage={journal}",
            f"hydra.sweeper.n_trials={trials}",
            f"hydra.sweeper.startup_trials={startup}",
            f"hydra.sweeper.best_params={workdir / name}.yaml",
        )
        / 60
    )
    return minutes, optuna.load_study(study_name=name, storage=search.storage(str(journal)))


def searches(trials: int, overrides: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = as_project(Path(tmp))
        prepare(workdir, overrides)
        results = {}
        for name, prune in (("pruned", True), ("unpruned", False)):
            minutes, study = run_search(workdir, name, trials, prune, overrides)
            states = [trial.state.name.lower() for trial in study.trials]
            print(
                f"{name:9s} {minutes:6.1f} min  trials: "
                + ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states)))
                + f"  best FID {study.best_value:.2f}",
                flush=True,
            )
            results[name] = (minutes, study.best_value)
    print(
        f"pruned_minutes={results['pruned'][0]:.1f} unpruned_minutes={results['unpruned'][0]:.1f} "
        f"pruned_best_fid={results['pruned'][1]:.2f} unpruned_best_fid={results['unpruned'][1]:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    launch = commands.add_parser("launchers")
    launch.add_argument("--jobs", type=int, default=4, help="sweep jobs (an even number: two optimizers x seeds)")
    launch.add_argument("overrides", nargs="*")
    find = commands.add_parser("search")
    find.add_argument("--trials", type=int, default=8)
    find.add_argument("overrides", nargs="*", help="e.g. data.limit=8192 (each trial: hparams_search's 3 epochs)")
    args = parser.parse_args()
    if args.command == "launchers":
        launchers(args.jobs, args.overrides)
    else:
        searches(args.trials, args.overrides)


if __name__ == "__main__":
    main()
