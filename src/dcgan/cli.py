"""What the Hydra entry points in ``src/`` share: validation, error reporting, sweep wiring."""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, NoReturn

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dcgan.config import OVERRIDES_TAG, Config, validate
from dcgan.errors import Interrupted, UserError
from dcgan.native_log import drop_harmless_lines, end_of_output
from dcgan.project import enter_root
from dcgan.worker_role import worker_without_outputs

log = logging.getLogger(__name__)


def _fail(message: str, code: int = 1) -> NoReturn:
    print(message, file=sys.stderr, flush=True)
    end_of_output()
    sys.exit(code)


def _one_line(exc: BaseException) -> str:
    """Hydra's multi-line report (e.g. "Could not find 'optimizer/adamw'" followed by the
    available options) as one line."""
    text = str(exc).split("Config search path")[0]  # the search path is Hydra's internals
    lines = text.splitlines() + (str(exc.__cause__).splitlines()[:1] if exc.__cause__ else [])
    return "; ".join(line.strip() for line in lines if line.strip()).replace(":; ", ": ")


# Config groups with a null slot in conf/config.yaml's defaults, chosen as GROUP=NAME.
OPTIONAL_GROUPS = ("experiment", "hparams_search", "debug")


def as_group_choice(override: str) -> str:
    """``+experiment=NAME`` (appending the group, as the presets were chosen before they had
    a slot in the defaults list, which Hydra then refuses) as ``experiment=NAME``."""
    group = override[1:].split("=", 1)[0]
    return override[1:] if override.startswith("+") and group in OPTIONAL_GROUPS and "=" in override else override


def launch(main: Callable[[], None]) -> None:
    """Call a ``@hydra.main`` entry point, reporting Hydra's own errors (an unknown config
    option, a bad override) as one line like every other user error, with TensorFlow's
    harmless C++ log lines dropped from the console."""
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing its report
    drop_harmless_lines()
    sys.argv[1:] = map(as_group_choice, sys.argv[1:])
    if worker_without_outputs():
        _run_record_outside_project()
    with user_errors_in_one_line():
        enter_root(sys.argv[0])
        main()


@contextmanager
def user_errors_in_one_line() -> Iterator[None]:
    """A user's mistake raised inside (a refused value, a config option Hydra cannot find, a
    config file that is not YAML, a failed sweep job) as one ``error: ...`` line on stderr and
    exit code 1, not a traceback: for the entry points and the benchmark scripts."""
    try:
        yield
    except UserError as exc:
        _fail(f"error: {exc}")
    except JobFailed as exc:
        _fail(f"error: a sweep job failed: {exc}")
    except (HydraException, OmegaConfBaseException) as exc:
        _fail(f"error: {_one_line(exc)}")
    except yaml.YAMLError as exc:  # a config file (e.g. a hand-edited params.yaml) that is not YAML
        mark = getattr(exc, "problem_mark", None)
        where = f"{mark.name}: line {mark.line + 1}, column {mark.column + 1}" if mark else "config file"
        _fail(f"error: {where}: not valid YAML ({getattr(exc, 'problem', None) or exc})")


def composed(overrides: list[str]) -> Config:
    """The validated config ``src/train.py`` would run with ``overrides``, for an entry point
    that starts other processes with them (Hydra's errors and refusals raised for ``launch``)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(Path(__file__).resolve().parents[2] / "conf"), version_base="1.3"):
        return validate(compose("config", overrides=[as_group_choice(item) for item in overrides]))


def _run_record_outside_project() -> None:
    """A multi_worker training's other workers write nothing in the project folder: their
    Hydra run record goes to a temp folder, removed at exit."""
    folder = tempfile.mkdtemp(prefix="dcgan-worker-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    sys.argv.append(f"hydra.run.dir={folder}")


# What a launcher's config (conf/hydra/launcher/) declares as each job's share of the cores.
JOB_THREADS = "DCGAN_JOB_THREADS"


def cores_per_job(jobs_at_once: int) -> int:
    """This machine's cores divided among ``jobs_at_once`` (joblib's -1: one job per core)."""
    cores = len(os.sched_getaffinity(0))
    return max(1, cores // (cores if jobs_at_once < 0 else min(jobs_at_once, cores)))


OmegaConf.register_new_resolver("cores_per_job", cores_per_job, replace=True)


def job_threads(hydra: DictConfig) -> int | None:
    """A sweep job's share of the cores, as its launcher's config declares it in
    ``hydra.job.env_set.DCGAN_JOB_THREADS``; None (all cores) where it declares none."""
    declared = hydra.job.env_set.get(JOB_THREADS)
    return None if declared is None else int(declared)


def _apply_hydra_context(config: Config) -> None:
    """Tag the MLflow run with the command-line overrides (they name it); give each job of a
    ``-m`` sweep its own output folders (its own checkpoints, so jobs never resume each
    other) and, under a parallel launcher, its share of the cores."""
    if not HydraConfig.initialized():
        return
    hydra = HydraConfig.get()
    overrides = list(hydra.overrides.task)
    if overrides:
        config.tracking.tags.setdefault(OVERRIDES_TAG, " ".join(overrides))
    if hydra.mode == RunMode.MULTIRUN:
        if config.train.threads is None:
            config.train.threads = job_threads(hydra)
            launcher = hydra.runtime.choices.get("hydra/launcher")
            if config.train.threads is None and launcher != "basic":
                log.warning(
                    "hydra/launcher=%s declares no CPU share per job (%s in hydra.job.env_set): each job uses "
                    "all cores; set train.threads, or use a launcher of conf/hydra/launcher/",
                    launcher,
                    JOB_THREADS,
                )
        job_dir = Path(hydra.runtime.output_dir)
        config.paths.models_dir = str(job_dir / "models")
        config.paths.reports_dir = str(job_dir / "reports")
        config.tracking.tags.setdefault("sweep_dir", hydra.sweep.dir)
        config.tracking.tags.setdefault("sweep_job", str(hydra.job.num))


class JobFailed(Exception):
    """A sweep job's one-line error, raised so the sweep records the job as failed and goes
    on (a search with its next trials); ``launch`` reports it if the sweep then stops."""


def _in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_stage(stage: str, cfg: DictConfig) -> object:
    """Validate ``cfg`` and run ``stage`` ("module:function", a function of the config),
    returning its result (a sweep's job result); a user error prints one line and exits 1
    (in a sweep: fails the job), a stop signal exits 128 + its number once the checkpoint
    is written. The stage's module is imported only once the config is valid: a refused
    config costs no TensorFlow start-up."""
    try:
        config = validate(cfg)
        _apply_hydra_context(config)
        module, function = stage.split(":")
        return getattr(importlib.import_module(module), function)(config)
    except UserError as exc:
        if _in_sweep():
            print(f"error: {exc}", file=sys.stderr, flush=True)
            raise JobFailed(str(exc)) from None
        _fail(f"error: {exc}")
    except Interrupted as exc:
        _fail(f"interrupted: {exc}", 128 + exc.signum)
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (e.g. while the classifier trains)
        _fail(
            "interrupted: stopped by Ctrl-C; what was complete is kept (outputs, the last checkpoint): rerun "
            "the same command",
            130,
        )
    except OSError as exc:
        if exc.filename is None:
            raise
        # A disk filling up or a folder turning read-only mid-way; writes are atomic, so
        # what is on disk is still the last complete version.
        _fail(f"error: {exc.filename}: {exc.strerror}")
    finally:
        # Hydra -m runs jobs in one process: each must start from a fresh Keras state.
        if "keras" in sys.modules:
            sys.modules["keras"].backend.clear_session()
            sys.modules["keras"].mixed_precision.set_dtype_policy("float32")
