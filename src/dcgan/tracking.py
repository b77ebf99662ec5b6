"""MLflow: where runs are stored, the run lifecycle, and the logging helpers stages share."""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import warnings
from contextlib import closing, contextmanager
from importlib import metadata
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import urlparse

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

from dcgan.config import OVERRIDES_TAG, Config, TrackingConfig, flatten, to_dict
from dcgan.errors import UserError
from dcgan.files import atomic_write, cache_dir, locked
from dcgan.precision import Precision
from dcgan.project import project_root

log = logging.getLogger(__name__)
# MLflow announces creating or upgrading its tables, and starting and stopping the system
# metrics monitor, at INFO: noise on stderr, which should hold one line when a run stops early.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
logging.getLogger("mlflow.system_metrics.system_metrics_monitor").setLevel(logging.WARNING)

EXPERIMENT_KIND = "mlflow.experimentKind"
PARENT_RUN_ENV = "DCGAN_SWEEP_RUN_ID"  # set by dcgan.sweeps while a Hydra multirun runs
BRANCHED_FROM_TAG = "branched_from"  # a run started from another's checkpoint (train.branch_from): its run id
CHAMPION = "champion"  # the registry alias of a dataset's best generator so far
PACKAGES = ("tensorflow", "tensorflow-cpu", "keras", "numpy", "mlflow", "dvc", "hydra-core")


def tracking_uri(settings: TrackingConfig) -> str:
    """``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else MLflow's default SQLite store,
    ``mlflow.db``, anchored at the project root (so ``mlflow ui`` there opens it)."""
    return settings.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def check_store(uri: str) -> None:
    """Fail fast, before any data or training work, if the tracking store is unusable."""
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        path = Path(uri[len("sqlite:///") :])
        if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise UserError(f"{path}: MLflow store is not writable (tracking.uri / MLFLOW_TRACKING_URI)")
        try:
            connection = sqlite3.connect(path)
            try:  # a file that is not a database fails on its first read, a damaged one here too or in the check
                problems = [row[0] for row in connection.execute("PRAGMA quick_check").fetchall() if row[0] != "ok"]
            finally:
                connection.close()
        except sqlite3.Error as exc:
            raise UserError(_unusable_sqlite(path, str(exc))) from None
        if problems:
            raise UserError(_unusable_sqlite(path, f"database disk image is malformed: {problems[0][:120]}"))
        # MLflow creates (or upgrades) the tables on first use; parallel jobs starting on a
        # new store would otherwise run that migration at once and read half-made tables.
        with locked(path, wait=True):
            if path.stat().st_size == 0:  # new: the quick check above made an empty file
                _start_from_empty_store(path)
            mlflow.MlflowClient(uri).search_experiments(max_results=1)
            if path.resolve() == project_root() / "mlflow.db":
                _follow_moved_project(path)
        return
    if scheme.startswith(("postgresql", "mysql", "mssql")):
        _check_database(uri)
    try:
        with _fail_fast():
            mlflow.MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:  # any failure here means the store cannot be used
        raise UserError(f"MLflow tracking store {_redacted(uri)} is unreachable: {_reason(exc)}") from None


def _start_from_empty_store(path: Path) -> None:
    """Replace the new, empty file ``path`` by a copy of MLflow's tables without an experiment,
    made once per MLflow version in the cache: MLflow would otherwise build them by running its
    schema migrations, seconds of CPU for every new project. MLflow adds the Default
    experiment, located in this project, when it first opens the copy. A damaged cached copy is
    made again; without a usable cache MLflow builds the tables itself."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore  # what MLflow opens SQLite stores with

    template = cache_dir() / f"mlflow-{metadata.version('mlflow')}-empty.db"
    try:
        if not _is_empty_store(template):
            template.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=template.parent) as folder:
                made = Path(folder) / "mlflow.db"
                SqlAlchemyStore(f"sqlite:///{made}", folder).engine.dispose()
                with closing(sqlite3.connect(made)) as db, db:
                    db.execute("DELETE FROM experiments")
                os.replace(made, template)  # concurrent makers: the last rename wins, each file complete
        atomic_write(path, lambda handle: handle.write(template.read_bytes()))
    except OSError as exc:
        log.debug("no copy of an empty MLflow store (%s): MLflow builds its tables", exc)


def _is_empty_store(path: Path) -> bool:
    """Whether ``path`` is an intact SQLite file with MLflow's tables and no experiment."""
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            return (
                db.execute("PRAGMA quick_check").fetchall() == [("ok",)]
                and db.execute("SELECT COUNT(*) FROM alembic_version").fetchone() == (1,)
                and db.execute("SELECT COUNT(*) FROM experiments").fetchone() == (0,)
            )
    except sqlite3.Error:  # missing, not a database, or without those tables
        return False


# Where a project's own SQLite store records file locations: MLflow stores them absolute.
_ARTIFACT_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
    ("model_versions", "source"),
)


def _follow_moved_project(store: Path) -> None:
    """Point the artifact locations the project's store recorded under another folder (the
    project was moved or copied there from) at this project's ``mlartifacts/`` (and MLflow's
    ``mlruns/`` of its Default experiment), so new runs do not write into the old folder."""
    root = store.parent
    with sqlite3.connect(store) as db:
        recorded = {row[0] for row in db.execute("SELECT artifact_location FROM experiments")}
        moves = {}
        for location in recorded:
            folder = Path(urlparse(location).path if location.startswith("file:") else location)
            if folder.name == "mlartifacts" and folder.parent != root:
                moves[location] = (
                    (root / "mlartifacts").as_uri() if location.startswith("file:") else str(root / "mlartifacts")
                )
            elif (
                folder.parent.name == "mlruns" and folder.parent.parent != root
            ):  # the Default experiment: <root>/mlruns/0
                moves[str(folder.parent)] = str(root / "mlruns")
        for old, new in moves.items():
            for table, column in _ARTIFACT_COLUMNS:
                db.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE substr({column}, 1, ?) = ?",
                    (new, len(old) + 1, len(old), old),
                )
            log.warning(
                "%s: artifact locations under %s now point to %s (the project was moved or copied)", store, old, new
            )


def _unusable_sqlite(path: Path, reason: str) -> str:
    return (
        f"{path}: cannot use the MLflow SQLite store ({reason}); move it aside (mv {path} {path}.damaged) "
        "to start a new one (checkpoints resume into a new run), or set tracking.uri"
    )


def _damaged_sqlite(exc: BaseException) -> str | None:
    """The message for a local SQLite store found damaged while in use, if that is what ``exc`` (or
    an exception behind it) reports; MLflow wraps it in errors that do not say so."""
    uri = mlflow.get_tracking_uri()
    if urlparse(uri).scheme != "sqlite":
        return None
    while exc is not None:
        if re.search(r"malformed|file is not a database", str(exc)):
            return _unusable_sqlite(Path(uri[len("sqlite:///") :]), "database disk image is malformed")
        exc = exc.__cause__ or exc.__context__
    return None


CHECK_TIMEOUT = 15  # seconds the pre-flight check waits for a tracking server's answer


@contextmanager
def mlflow_settings(settings: dict[str, str]) -> Iterator[None]:
    """MLflow's environment variables ``settings`` for the duration, then as they were."""
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _fail_fast():
    """One quick attempt instead of MLflow's retries (minutes against a dead server), for
    the pre-flight check only: once training runs, the retries ride out a server restart."""
    return mlflow_settings({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(CHECK_TIMEOUT)})


def _reason(exc: Exception) -> str:
    text = str(exc)
    if "Read timed out" in text:
        return "no answer in time (is its database up? see the server's log)"
    server_error = re.search(r"too many (5\d\d) error responses|error code (5\d\d)", text)
    if server_error:
        code = server_error.group(1) or server_error.group(2)
        return f"the server failed to answer (HTTP {code}; is its database up? see the server's log)"
    if "Connection refused" in text or "Failed to establish a new connection" in text:
        return "connection refused (is the server running? python src/tracking_server.py status)"
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _redacted(uri: str) -> str:
    """``uri`` without the password it may hold."""
    parsed = urlparse(uri)
    return uri.replace(f":{parsed.password}@", ":***@") if parsed.password else uri


def _check_database(uri: str) -> None:
    """Connect once to a database store: SQLAlchemy's own start-up retries take over a
    minute to report a wrong password or a database that is down."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(
            uri, connect_args={"connect_timeout": CHECK_TIMEOUT} if uri.startswith("postgresql") else {}
        )
        with engine.connect():
            pass
    except Exception as exc:  # the driver's own error types (wrong password, refused, unknown database, no driver)
        lines = [line.strip() for line in str(getattr(exc, "orig", None) or exc).splitlines() if line.strip()]
        raise UserError(
            f"MLflow tracking store {_redacted(uri)}: {lines[0] if lines else type(exc).__name__}"
        ) from None


@contextmanager
def store_outage_is_user_error() -> Iterator[None]:
    """A tracking store that stops answering mid-run, beyond MLflow's retries (minutes for a
    server): one line; the checkpoint of the last completed epoch is on disk already."""
    from requests.exceptions import RequestException

    try:
        yield
    except (MlflowException, RequestException) as exc:
        raise UserError(
            _damaged_sqlite(exc)
            or f"MLflow tracking store {_redacted(mlflow.get_tracking_uri())} failed during the run "
            f"({_reason(exc)}); completed epochs are checkpointed: rerun the same command to resume into the same run"
        ) from None


def connect(settings: TrackingConfig) -> str:
    uri = tracking_uri(settings)
    check_store(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=Path.cwd())
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def provenance_tags() -> dict[str, str]:
    """What a run needs to be reproduced beyond its params: code version and environment."""
    tags = {"python": sys.version.split()[0]}
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["git_commit"] = commit
        tags["git_dirty"] = str(bool(_git("status", "--porcelain", "--untracked-files=no")))
    for name in PACKAGES:
        try:
            tags[f"version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    for variable in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        if os.environ.get(variable):
            tags[variable.lower()] = os.environ[variable]
    return tags


_DUPLICATE_ROW = re.compile(r"RESOURCE_ALREADY_EXISTS|UNIQUE constraint failed|violates unique constraint")


def once_more_if_raced(action):
    """``action()``, and once more if another process inserted the same row (experiment,
    dataset) between MLflow's lookup and its insert, as parallel sweep jobs and DVC queue
    workers starting together do: the second lookup finds the winner's row."""
    try:
        return action()
    except MlflowException as exc:
        if not _DUPLICATE_ROW.search(f"{exc.error_code} {exc}"):
            raise
        return action()


def experiment_id(name: str) -> str:
    """The experiment's id, creating it if needed. With a local SQLite store, artifacts go
    to ``<project>/mlartifacts`` (not a path relative to wherever the first run happened
    to start, which for a queued DVC experiment is a temp copy deleted afterwards)."""
    # Marked as model training, not GenAI (MLflow 3.17's UI still opens in its GenAI view until
    # switched: README; tests/test_mlflow_ui.py).
    kind = {EXPERIMENT_KIND: "custom_model_development"}

    def lookup_or_create() -> str:
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            local = urlparse(mlflow.get_tracking_uri()).scheme == "sqlite"
            return mlflow.create_experiment(
                name, artifact_location=(project_root() / "mlartifacts").as_uri() if local else None, tags=kind
            )
        if EXPERIMENT_KIND not in experiment.tags:  # made before the kind was set
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, kind[EXPERIMENT_KIND])
        return experiment.experiment_id

    return once_more_if_raced(lookup_or_create)


def run_name(config: Config) -> str:
    """``tracking.run_name``, else the DVC experiment's name, else what the run trains (data,
    architecture, optimizer) and the command-line overrides, if any."""
    if config.tracking.run_name:
        return config.tracking.run_name
    if os.environ.get("DVC_EXP_NAME"):
        return os.environ["DVC_EXP_NAME"]
    what = f"{config.data.name} {config.model.name} {config.optimizer.name}"
    overrides = config.tracking.tags.get(OVERRIDES_TAG)
    return f"{what}: {overrides}" if overrides else what


def _existing_run(run_id: Optional[str]) -> Optional[str]:
    """``run_id`` if the current store has it (a checkpoint may come from another store)."""
    if run_id is None:
        return None
    try:
        mlflow.get_run(run_id)
        return run_id
    except MlflowException:
        log.warning(
            "MLflow run %s of the checkpoint is not in %s; continuing in a new run", run_id, mlflow.get_tracking_uri()
        )
        return None


def start_run(config: Config, run_id: Optional[str]) -> mlflow.ActiveRun:
    """Open the training's run: a new one, or ``run_id`` again when resuming.

    Params are immutable in MLflow, so a resumed run keeps its original ones; the tags
    ``train.epochs`` and ``train.lr_decay`` follow the length and schedule it is currently
    asked for (a run of constant rates can be continued into a decay, dcgan.resume).
    """
    try:
        run_id = _existing_run(run_id)
        if run_id is not None:
            run = mlflow.start_run(run_id=run_id, log_system_metrics=config.tracking.system_metrics)
        else:
            mlflow.set_experiment(experiment_id=experiment_id(config.tracking.experiment))
            # A job of a Hydra multirun is a child of the sweep's run (dcgan.sweeps).
            parent = {"mlflow.parentRunId": os.environ[PARENT_RUN_ENV]} if os.environ.get(PARENT_RUN_ENV) else {}
            run = mlflow.start_run(
                run_name=run_name(config),
                tags={**provenance_tags(), **config.tracking.tags, **parent},
                log_system_metrics=config.tracking.system_metrics,
            )
            mlflow.log_params(flatten(to_dict(config)))
    except MlflowException as exc:
        raise UserError(f"MLflow: {str(exc).splitlines()[0]}") from None
    mlflow.set_tags({"train.epochs": config.train.epochs, "train.lr_decay": config.train.lr_decay})
    return run


def logged_epochs(run_id: str) -> int:
    """The last epoch whose metrics the run has logged (0 for none)."""
    return max((metric.step for metric in mlflow.MlflowClient().get_metric_history(run_id, "d_loss")), default=0)


def end_abandoned_run(run_id: Optional[str]) -> None:
    """Mark ``run_id`` KILLED if it is still RUNNING: its process died (``kill -9``) and its
    checkpoint is being discarded, so nothing will ever finish it."""
    if run_id is None:
        return
    client = mlflow.MlflowClient()
    try:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "KILLED")
            log.info("MLflow run %s of the discarded checkpoint marked KILLED", run_id)
    except MlflowException:
        pass  # not in this store


def log_precision(precision: Precision) -> None:
    """The precision trained in and, for ``auto``, the figures it was chosen by."""
    probe = {f"precision.probe.{name}_images_per_sec": rate for name, rate in precision.images_per_sec.items()}
    mlflow.set_tags({"precision": precision.policy, "precision.source": precision.source, **probe})


def generator_uri(run_id: str) -> str:
    """The ``models:/`` URI of the last generator the run logged (one per training invocation)."""
    try:
        experiment = mlflow.MlflowClient().get_run(run_id).info.experiment_id
    except MlflowException:
        raise UserError(f"MLflow run {run_id} is not in the store {mlflow.get_tracking_uri()}") from None
    logged = mlflow.search_logged_models(
        [experiment], filter_string=f"source_run_id = '{run_id}'", output_format="list"
    )
    if not logged:
        raise UserError(f"MLflow run {run_id} logged no generator model; rerun the train stage (dvc repro -f train)")
    return max(logged, key=lambda model: int(model.tags.get("epoch", 0))).model_uri


def register_generator(run_id: str, fid: float, scored_on: dict[str, str]) -> bool:
    """Register the run's last logged generator as a version of ``dcgan-<data>`` with its FID
    (once: an evaluation rerun scores it the same), and move the champion alias to it if its
    FID is lower than the champion's, scored the same way (``scored_on``: data, test split,
    feature space, sample count); a champion scored otherwise cannot be compared, and keeps
    the alias. True if it moved.

    A project's registrations take turns (a lock in the project folder): evaluations ending
    together, as parallel DVC queue workers' do, would otherwise each compare against the
    same old champion, and the later alias write could crown the worse of them."""
    client = mlflow.MlflowClient()
    name = f"dcgan-{scored_on['data']}"
    source, tags = generator_uri(run_id), {"fid": repr(fid), "run_id": run_id, **scored_on}
    with locked(project_root() / "mlflow-registry", wait=True):
        registered = [
            version
            for version in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
            if version.source == source and all(version.tags.get(key) == value for key, value in tags.items())
        ]
        version = registered[0] if registered else mlflow.register_model(source, name, tags=tags)
        return _crown_if_better(client, name, version, fid, scored_on)


def _crown_if_better(client: mlflow.MlflowClient, name: str, version, fid: float, scored_on: dict[str, str]) -> bool:
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no champion yet
        champion = None
    comparable = champion is not None and all(champion.tags.get(key) == value for key, value in scored_on.items())
    if champion is not None and not comparable:
        log.warning(
            "registry: %s version %s keeps alias %s: scored on other data, features or sample count than version %s",
            name,
            champion.version,
            CHAMPION,
            version.version,
        )
    if champion is None or (comparable and fid < float(champion.tags["fid"])):
        client.set_registered_model_alias(name, CHAMPION, version.version)
        log.info("registry: %s version %s (FID %.3f) is the %s", name, version.version, fid, CHAMPION)
        return True
    log.info(
        "registry: %s version %s (FID %.3f); %s stays version %s",
        name,
        version.version,
        fid,
        CHAMPION,
        champion.version,
    )
    return False


def log_training_data(name: str, folder: Path, manifest: dict, digest: str) -> None:
    """The prepared data as the run's dataset input, so the run page's "Datasets" names what
    it was trained on; ``digest``, the manifest's SHA-256, cut to MLflow's 36 characters."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import Schema, TensorSpec

    schema = Schema([TensorSpec(np.dtype(np.float32), (-1, *manifest["image_shape"]), "image")])
    with warnings.catch_warnings():
        # MLflow registers the same local-file source for two URI schemes and warns that a
        # path matches both; either is the same source.
        warnings.filterwarnings(
            "ignore", "The specified dataset source can be interpreted in multiple ways", UserWarning
        )
        source = resolve_dataset_source(str(folder.resolve()))
    dataset = MetaDataset(source, name=name, digest=digest[:36], schema=schema)
    once_more_if_raced(
        lambda: mlflow.log_input(
            dataset, context="training", tags={"images": str(manifest["splits"]["train"]["count"])}
        )
    )


def log_generator(generator, latent_dim: int, epoch_number: int) -> None:
    """Log the generator as an MLflow model whose signature is noise -> images, tagged
    with the epoch it was trained to (a resumed run logs one model per invocation)."""
    import keras
    import tensorflow as tf

    noise = np.random.default_rng(0).standard_normal((2, latent_dim)).astype(np.float32)
    signature = mlflow.models.infer_signature(noise, np.asarray(generator(noise, training=False)))
    # Stated, not inferred: inference re-imports the model in a subprocess (~8 s per training)
    # and lists this package, which is not on PyPI; the logged network is plain Keras.
    requirements = [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}", f"numpy=={np.__version__}"]
    # A signature and no input example: MLflow checks an example by reloading the saved model to
    # predict it (seconds, and Keras's progress bar); tests/test_generate.py serves the model.
    mlflow.tensorflow.log_model(
        generator,
        name="generator",
        signature=signature,
        pip_requirements=requirements,
        step=epoch_number,
        tags={"epoch": str(epoch_number)},
    )
