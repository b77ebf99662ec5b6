"""Shared fixtures: the real dataset mirror, composed configs, a tiny prepared MNIST slice,
a local HTTP server, a small archive laid out like TensorFlow's flower_photos.tgz and a SLURM
cluster of this machine alone."""

from __future__ import annotations

import atexit
import collections
import functools
import hashlib
import http.server
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import pytest
import yaml
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from dcgan.config import MIRROR_ENV, Config, validate
from dcgan.data.sources import ImageArchive
from dcgan.files import CACHE_ENV

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # tests start what benchmarks start (a loopback Ray cluster) the same way
from projects import as_project  # noqa: E402
from synthetic_mirror import make_synthetic_mirror  # noqa: E402

REAL_MIRROR = Path(os.environ.get(MIRROR_ENV) or REPO.parent / "shared" / "datasets").resolve()
HAS_REAL_MIRROR = (REAL_MIRROR / "mnist").is_dir()
# Without the real mirror, in-process tests read a small one made here (its hashes registered
# in this process only); tests that start project processes or need real images are skipped.


def _synthetic_mirror() -> Path:
    root = Path(tempfile.mkdtemp(prefix="dcgan-mirror-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return make_synthetic_mirror(root)


MIRROR = REAL_MIRROR if HAS_REAL_MIRROR else _synthetic_mirror()
TINY = ["debug=tiny"]
# What the train stage leaves in a project (the first epoch's grid among them).
TRAIN_OUTPUTS = (
    "models/generator.keras",
    "models/generator_best.keras",
    "models/discriminator.keras",
    "models/run.json",
    "reports/train_history.csv",
    "reports/train_metrics.json",
    "reports/samples/epoch_0001.png",
)
# The default optimizer's rates as conf/ states them, so tests follow a retuned default.
DEFAULT_ADAM = yaml.safe_load((REPO / "conf/optimizer/adam.yaml").read_text())


def pytest_configure(config):
    worker, workers = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    # A synthetic mirror's hashes are registered in its own process: xdist's workers, which
    # inherit this environment, make their own instead of taking the controller's for a real one.
    if HAS_REAL_MIRROR or worker or config.getoption("dist", "no") == "no":
        os.environ[MIRROR_ENV] = str(MIRROR)
    # The per-user cache (train.precision=auto's choice, MLflow's empty store): made once per
    # test session, not read from the user's.
    os.environ.setdefault(CACHE_ENV, tempfile.mkdtemp(prefix="dcgan-cache-"))
    if worker and workers:
        # Each parallel worker on its own share of the cores, and so are the processes it starts
        # (they size their thread pools by affinity): TensorFlow's pools of two workers on the
        # same cores wait on each other, which made two workers slower than one.
        cores = sorted(os.sched_getaffinity(0))
        share = cores[int(worker.removeprefix("gw")) % len(cores) :: int(workers)]
        os.sched_setaffinity(0, share or cores)


def pytest_collection_modifyitems(config, items):
    _modules_with_most_slow_tests_first(items)
    if HAS_REAL_MIRROR:
        return
    skip = pytest.mark.skip(
        reason=f"needs the real dataset mirror ({REAL_MIRROR} not found; set {MIRROR_ENV}): "
        "this run has a synthetic one for in-process tests only"
    )
    for item in items:
        if item.get_closest_marker("slow") or item.get_closest_marker("real_data"):
            item.add_marker(skip)


def _modules_with_most_slow_tests_first(items: list) -> None:
    """Order modules by their count of slow tests (a stable sort: within a module, and among
    quick modules, collection order stays). ``make test``'s workers take whole modules in
    this order (``--no-loadscope-reorder``), so the long ones start first and the many
    short ones fill the end, where a long module started last would leave a worker idle."""
    slow_tests = collections.Counter(item.module.__name__ for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow_tests[item.module.__name__])


def needs_package(package: str, found: bool, what: str) -> None:
    """Skip, naming the Debian package, when a program a test starts is not installed
    (``make test`` installs them when it runs as root: ``make system-packages``)."""
    if not found:
        pytest.skip(f"{package} is not installed ({what}); `make test` installs it when run as root")


def compose_config(overrides: list[str] = (), tmp_path: Path | None = None) -> Config:
    """The real composed config with ``overrides``, its outputs under ``tmp_path``."""
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    config = validate(cfg)
    if tmp_path is not None:
        config.paths.raw_dir = str(tmp_path / "data/raw")
        config.paths.prepared_dir = str(tmp_path / "data/prepared")
        config.paths.models_dir = str(tmp_path / "models")
        config.paths.reports_dir = str(tmp_path / "reports")
        config.paths.classifier_dir = str(tmp_path / "models/classifier")
        config.tracking.uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return config


@contextmanager
def http_server(folder: Path) -> Iterator[str]:
    """Serve ``folder`` over HTTP on a free localhost port; yields the base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def flower_archive(folder: Path, extra_member: Optional[str] = None) -> Path:
    """``folder/flower_photos.tgz`` laid out like TensorFlow's (flower_photos/<class>/*.jpg and
    LICENSE.txt), holding 12 real photos of 2 classes from the mirror; ``extra_member``: one
    more photo stored under that name."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "flower_photos.tgz"
    mirror_photos = MIRROR / "flowers_ccby" / "images"
    photos = [photo for kind in ("daisy", "roses") for photo in sorted(mirror_photos.glob(f"{kind}_*.jpg"))[:6]]
    with tarfile.open(path, "w:gz") as tar:
        for photo in photos:
            kind, original_name = photo.name.split("_", 1)
            tar.add(photo, arcname=f"flower_photos/{kind}/{original_name}")
        licence = b"All images in this archive are licensed under the Creative Commons By-Attribution License.\n"
        info = tarfile.TarInfo("flower_photos/LICENSE.txt")
        info.size = len(licence)
        tar.addfile(info, io.BytesIO(licence))
        if extra_member:
            tar.add(photos[0], arcname=extra_member)
    return path


def archive_entry(path: Path, urls: list[str]) -> ImageArchive:
    """The registry entry of the archive at ``path`` (its real hash and size), served from ``urls``."""
    return ImageArchive(
        tuple(urls), hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size, "flower_photos", "subfolder"
    )


@pytest.fixture(autouse=True)
def float32_policy():
    """Building a GAN sets Keras' global dtype policy (train.precision); reset it after each test."""
    yield
    import keras

    keras.mixed_precision.set_dtype_policy("float32")


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory) -> Config:
    """A config whose prepared data (512 MNIST training images) already exists."""
    from dcgan.data.prepare import prepare

    config = compose_config(TINY, tmp_path_factory.mktemp("tiny"))
    prepare(config.data, config.paths)
    return config


def subprocess_env() -> dict[str, str]:
    """This environment for a project process, minus a tracking URI of the caller's: the
    process uses the MLflow store of the folder it runs in."""
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def run_stage(
    stage: str, *overrides: str, cwd: Path, check: bool = True, timeout: float = 600, own_process: bool = False
) -> subprocess.CompletedProcess:
    """Run ``src/<stage>.py`` as a user would, in the project folder ``cwd`` (its MLflow store:
    ``cwd/mlflow.db``): in this process (its TensorFlow already imported, which costs a new
    process 5-8 s), or with ``own_process`` in a new one, where the process is the point
    (start-up output, bit-identity across processes, TensorFlow's device set-up). A sweep
    (``-m``) always gets its own: its MLflow parent run is ended by an exit handler."""
    as_project(cwd)
    command = [sys.executable, str(REPO / "src" / f"{stage}.py"), *overrides]
    if own_process or "-m" in overrides:
        result = subprocess.run(command, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    else:
        result = _run_in_this_process(command, cwd)
    if check and result.returncode != 0:
        raise AssertionError(f"{stage} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def _run_in_this_process(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``command`` (python, an entry script, its arguments) run as ``__main__`` here, with
    this process's working directory, arguments, environment and root logger put back
    afterwards; its exit status and what it printed, as ``subprocess.run`` gives them."""
    import logging
    import runpy
    from contextlib import redirect_stderr, redirect_stdout

    from hydra.core.global_hydra import GlobalHydra
    from mlflow.tracking import fluent
    from mlflow.tracking._tracking_service import utils as mlflow_tracking

    # MLflow's state as a new process has it: no active experiment (a resumed run is started by
    # its id alone), no tracking URI set (put back afterwards: a later test's MLFLOW_TRACKING_URI
    # would lose to the stage's) and no cached artifact locations (MLflow caches them by run id,
    # and a copied project's runs, same ids in another folder, would write into the original's
    # mlartifacts/).
    fluent._active_experiment_id = None
    mlflow_tracking._artifact_repos_cache.clear()
    saved_cwd, saved_argv, saved_env = os.getcwd(), sys.argv[:], dict(os.environ)
    saved_handlers, saved_level = logging.root.handlers[:], logging.root.level
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    # Descriptor 2 stays pytest's: the console filter is a process's (test_native_log).
    os.environ["DCGAN_TF_LOGS"] = "1"
    out, err = io.StringIO(), io.StringIO()
    # Handlers writing to the console write to the captured output meanwhile: Hydra's logging
    # set-up closes every handler there is (logging._handlerList, attached or not), and absl's
    # closes its stream unless it is the current sys.stderr (pytest's would be closed, then).
    # A stream is known by its file descriptor too: DVC's import wraps sys.stdout and sys.stderr
    # (colorama), after absl's handler took the unwrapped one.
    console = {_console_key(sys.stdout): out, _console_key(sys.stderr): err}
    handlers = [ref() for ref in logging._handlerList]
    redirected = [
        (handler, handler.stream) for handler in handlers if _console_key(vars(handler).get("stream")) in console
    ]
    for handler, stream in redirected:
        handler.stream = console[_console_key(stream)]
    returncode = 0
    try:
        os.chdir(cwd)
        sys.argv = command[1:]
        GlobalHydra.instance().clear()
        with redirect_stdout(out), redirect_stderr(err), mlflow_tracking._use_tracking_uri(None):
            try:
                runpy.run_path(command[1], run_name="__main__")
            except SystemExit as exit:
                returncode = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
                if isinstance(exit.code, str):
                    print(exit.code, file=sys.stderr)
    finally:
        GlobalHydra.instance().clear()
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        logging.root.handlers[:] = saved_handlers
        logging.root.setLevel(saved_level)
        for handler, stream in redirected:
            handler.stream = stream
    return subprocess.CompletedProcess(command, returncode, out.getvalue(), err.getvalue())


def _console_key(stream) -> object:
    """The file descriptor a stream writes to, or the stream itself if it has none."""
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both of the latter
        return id(stream)


def last_line_error(result: subprocess.CompletedProcess) -> str:
    """The one-line error of a failed run; no traceback anywhere in its output."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()[-1]


def training_run_id(workdir: Path) -> Optional[str]:
    """The MLflow run of the training in ``workdir``, from the moment it starts (its checkpoint
    state records it then; ``models/run.json`` is written when the stage succeeds)."""
    path = workdir / "models/checkpoints/state.json"
    return json.loads(path.read_text()).get("mlflow_run_id") if path.is_file() else None


def mlflow_client(workdir: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")


def sweep_runs(client: MlflowClient, experiment: str) -> tuple:
    """The one sweep's parent run in ``experiment`` and its child runs."""
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert len(parents) == 1, [run.info.run_name for run in parents]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1
    return parents[0], children


def venv_env(**extra: str) -> dict[str, str]:
    """``subprocess_env()`` with this venv's bin first on PATH (DVC's stage commands run
    ``python``, `mlflow models serve` runs ``uvicorn``), plus ``extra``."""
    return {**subprocess_env(), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **extra}


def sh(*args: str, cwd: Path, timeout: float = 900, env: Optional[dict] = None) -> str:
    """Run a command (git, dvc) in ``cwd``; its output, or an AssertionError showing it."""
    result = subprocess.run(args, cwd=cwd, env=env or venv_env(), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result.stdout + result.stderr


def run_dvc_queue(
    project: Path, workers: int = 2, env: Optional[dict] = None, timeout: float = 900, server_log: Optional[Path] = None
) -> str:
    """Start ``workers`` DVC queue workers in ``project`` and wait until the queue is done; its
    status. If it is not done in ``timeout`` s: an AssertionError with the status, each task's
    log (and the tail of ``server_log``)."""
    # Detached from our pipes: the workers inherit them and `dvc queue start` would wait for them.
    subprocess.run(
        ["dvc", "queue", "start", "-j", str(workers)],
        cwd=project,
        env=env or venv_env(),
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=120,
    )
    deadline = time.monotonic() + timeout
    while "Queued" in (status := sh("dvc", "queue", "status", cwd=project, env=env)) or "Running" in status:
        if time.monotonic() > deadline:
            tasks = [
                line.split()[0] for line in status.splitlines()[1:] if line.strip() and not line.startswith("Worker")
            ]
            logs = [sh("dvc", "queue", "logs", task, cwd=project, env=env)[-3000:] for task in tasks]
            if server_log is not None and server_log.is_file():
                logs.append(server_log.read_text(errors="replace")[-3000:])
            raise AssertionError(f"the DVC queue is not done after {timeout:.0f} s:\n{status}\n" + "\n".join(logs))
        time.sleep(5)
    return status


def copy_of_repo(root: Path) -> Path:
    """``root`` holding a copy of the repository's tracked files (its code and conf/ too)."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in filter(None, tracked.split("\0")):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    return root


def dvc_project(root: Path, overrides: list[str]) -> Path:
    """A fresh git+DVC project in ``root`` holding exactly the repo's tracked files, its
    params.yaml composed with ``overrides``, committed."""
    from dvc.utils.hydra import compose_and_dump

    copy_of_repo(root)
    compose_and_dump(root / "params.yaml", str(root / "conf"), None, "config", str(root), overrides)
    sh("git", "init", "-q", cwd=root)
    sh("git", "config", "user.email", "test@localhost", cwd=root)
    sh("git", "config", "user.name", "Test", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "project", cwd=root)
    return root


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports on 127.0.0.1 that are free now, below the
    system's ephemeral range (where any outgoing connection may take one meanwhile)."""
    ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:
        first = random.randrange(10000, ephemeral - count)
        try:
            probes = [socket.create_server(("127.0.0.1", port)) for port in range(first, first + count)]
        except OSError:
            continue
        for probe in probes:
            probe.close()
        return first


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> tuple[dict[str, str], range]:
    """A SLURM cluster of this machine alone: munged, slurmctld and slurmd on 127.0.0.1 with
    their state in a temp folder, for the module's tests; the environment srun needs, and the
    ports SLURM reserves job steps from."""
    programs = {"munged": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd", "srun": "slurm-client"}
    for program, package in programs.items():
        needs_package(package, shutil.which(program) is not None, "a one-machine SLURM cluster")
    if os.getuid() != 0:
        pytest.skip("slurmd starts its tasks as their user only when it runs as root")
    folder = tmp_path_factory.mktemp("slurm")
    (folder / "munge.key").write_bytes(os.urandom(128))
    (folder / "munge.key").chmod(0o600)
    for state in ("state", "spool"):
        (folder / state).mkdir()
    controller_port, node_port, first_step_port = free_port(), free_port(), free_ports(100)
    step_ports = range(first_step_port, first_step_port + 100)
    memory_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20  # what jobs may ask for
    config = folder / "slurm.conf"
    config.write_text(
        f"""ClusterName=dcgantest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={controller_port}
SlurmdPort={node_port}
MpiParams=ports={step_ports[0]}-{step_ports[-1]}
AuthType=auth/munge
AuthInfo=socket={folder}/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
NodeName=localhost NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""
    )
    env = {**subprocess_env(), "SLURM_CONF": str(config)}
    munge = (
        f"munged --foreground --force --key-file={folder}/munge.key --socket={folder}/munge.sock "
        f"--pid-file={folder}/munged.pid --seed-file={folder}/munge.seed --log-file={folder}/munged.log"
    )
    daemons = [
        subprocess.Popen(command.split(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        for command in (munge, "slurmctld -D -i", "slurmd -D -N localhost")
    ]
    node_state = ["sinfo", "--noheader", "--format=%t"]
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(node_state, env=env, capture_output=True, text=True).stdout.strip() != "idle":
            assert time.monotonic() < deadline, (folder / "slurmd.log").read_text()[-2000:]
            time.sleep(0.5)
        yield {"SLURM_CONF": str(config)}, step_ports
    finally:
        for daemon in reversed(daemons):
            daemon.terminate()
            daemon.wait(timeout=30)


class Training:
    """``src/train.py`` started in the background, its output in files we can poll."""

    def __init__(self, workdir: Path, *overrides: str, env: Optional[dict] = None):
        self.stdout = workdir / f"stdout-{time.monotonic_ns()}.log"
        env = {**subprocess_env(), "PYTHONUNBUFFERED": "1", **(env or {})}
        as_project(workdir)
        with open(self.stdout, "w") as out, open(self.stdout.with_suffix(".err"), "w") as err:
            self.process = subprocess.Popen(
                [sys.executable, str(REPO / "src/train.py"), *overrides], cwd=workdir, env=env, stdout=out, stderr=err
            )

    def wait_until(self, condition, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.process.poll() is None, f"training ended early:\n{self.stderr[-3000:]}"
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.05)

    def epochs_started(self) -> int:
        return self.stdout.read_text().count("Epoch ")

    def stop(self, signum: int, after_seconds: float) -> int:
        time.sleep(after_seconds)
        self.process.send_signal(signum)
        return self.process.wait(timeout=300)

    @property
    def stderr(self) -> str:
        return self.stdout.with_suffix(".err").read_text()


@pytest.fixture
def mount_tmpfs(tmp_path):
    """Mount small tmpfs file systems (needs root, as in CI's container); unmount afterwards."""
    mounted = []

    def mount(point: Path | str, options: str) -> Path:
        """Mount at ``point`` (a name: a new folder in ``tmp_path``)."""
        point = tmp_path / point
        point.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True, text=True
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)
