"""Sweeps, measured side by side in one run on one machine.

    python benchmarks/sweeps.py launchers [--jobs 4] [overrides ...]
    python benchmarks/sweeps.py search [--trials 8] [overrides ...]

``launchers``: the wall time of the same ``--jobs``-job sweep of the smoke profile
(``debug=tiny``; two optimizers x seeds) run by Hydra's basic launcher (one job after
another, each on all cores) and by the joblib launcher with two jobs at once (each on half
the cores, ``train.threads``). Last line: ``basic_s=... parallel_s=... speedup=...``.

``search``: the FID search (``hparams_search=fid_optuna``) of ``--trials`` trials, once
with pruning and once without (every trial runs to the end), same sampler seed: trials
finished and pruned, the best FID, the minutes. Last line:
``pruned_minutes=... unpruned_minutes=... pruned_best_fid=... unpruned_best_fid=...``.

Both run ``src/train.py -m`` as a user does, in a temp folder, on data prepared (and a
domain classifier trained) before the clocks start.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from dcgan import search

REPO = Path(__file__).resolve().parents[1]


def train(workdir: Path, *overrides: str) -> float:
    """Seconds ``python src/train.py`` takes with ``overrides`` in ``workdir``."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(REPO / "src/train.py"), *overrides], cwd=workdir, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"train {' '.join(overrides)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def prepare(workdir: Path, overrides: list[str]) -> None:
    """The data and the domain classifier, made before the clocks start."""
    for stage in ("prepare", "classifier"):
        result = subprocess.run([sys.executable, str(REPO / f"src/{stage}.py"), *overrides], cwd=workdir, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"{stage} failed:\n{result.stderr[-3000:]}")


def launchers(jobs: int, overrides: list[str]) -> None:
    seeds = ",".join(str(seed) for seed in range(1, jobs // 2 + 1))
    sweep = ["-m", "debug=tiny", *overrides, "optimizer=adam,rmsprop", f"train.seed={seeds}"]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        prepare(workdir, ["debug=tiny", *overrides])
        basic = train(workdir, *sweep)
        print(f"basic launcher, {jobs} jobs one after another: {basic:.1f} s", flush=True)
        parallel = train(workdir, *sweep, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
        print(f"joblib launcher, 2 jobs at a time:            {parallel:.1f} s", flush=True)
    print("ray: not measured (no Ray launcher yet)")
    print(f"basic_s={basic:.1f} parallel_s={parallel:.1f} speedup={basic / parallel:.2f}")


def run_search(workdir: Path, name: str, trials: int, prune: bool, overrides: list[str]) -> tuple[float, optuna.Study]:
    journal = workdir / f"{name}.journal"
    # Without pruning: every trial counts as a start-up trial, which the pruner never stops.
    startup = 2 if prune else trials
    minutes = train(workdir, "-m", "hparams_search=fid_optuna", *overrides, f"hydra.sweeper.study_name={name}",
                    f"hydra.sweeper.storage={journal}", f"hydra.sweeper.n_trials={trials}",
                    f"hydra.sweeper.startup_trials={startup}", f"hydra.sweeper.best_params={workdir / name}.yaml") / 60
    return minutes, optuna.load_study(study_name=name, storage=search.storage(str(journal)))


def searches(trials: int, overrides: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        prepare(workdir, overrides)
        results = {}
        for name, prune in (("pruned", True), ("unpruned", False)):
            minutes, study = run_search(workdir, name, trials, prune, overrides)
            states = [trial.state.name.lower() for trial in study.trials]
            print(f"{name:9s} {minutes:6.1f} min  trials: " + ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states)))
                  + f"  best FID {study.best_value:.2f}", flush=True)
            results[name] = (minutes, study.best_value)
    print(f"pruned_minutes={results['pruned'][0]:.1f} unpruned_minutes={results['unpruned'][0]:.1f} "
          f"pruned_best_fid={results['pruned'][1]:.2f} unpruned_best_fid={results['unpruned'][1]:.2f}")


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
