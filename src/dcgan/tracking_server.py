"""A team's MLflow tracking server: ``mlflow server`` on a PostgreSQL cluster of the project's
own, both on 127.0.0.1, artifacts proxied by the server into a folder (docs/team.md).

Everything lives in one folder (default ``.mlflow-server/``): ``password`` (generated, 0600),
``postgres/data`` (the cluster), ``artifacts/``, ``state.json`` (ports, the server's pid) and
the two logs. Stopping keeps it all; starting again reuses it.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import psutil

from dcgan.errors import UserError
from dcgan.files import write_json

HOST = "127.0.0.1"  # loopback only; docs/team.md says what exposing it takes
DB_USER = "mlflow"
DB_NAME = "mlflow"
# PostgreSQL refuses to run as root; root runs it as the account Debian's package creates.
ROOT_DB_ACCOUNT = "postgres"


@dataclass(frozen=True)
class ServerFolder:
    root: Path

    @property
    def password_file(self) -> Path:
        return self.root / "password"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def postgres(self) -> Path:
        return self.root / "postgres"  # owned by the account PostgreSQL runs as

    @property
    def cluster(self) -> Path:
        return self.postgres / "data"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def mlflow_log(self) -> Path:
        return self.root / "mlflow.log"

    @property
    def postgres_log(self) -> Path:
        return self.postgres / "postgres.log"

    def state(self) -> dict:
        return json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}

    def password(self) -> str:
        return self.password_file.read_text().strip()

    def database_uri(self, db_port: int) -> str:
        return f"postgresql://{DB_USER}:{self.password()}@{HOST}:{db_port}/{DB_NAME}"


def _postgres_bin(program: str) -> str:
    """A PostgreSQL server program: on PATH, else Debian's versioned folder (newest)."""
    found = shutil.which(program) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"), reverse=True)), None
    )
    if found is None:
        raise UserError(
            f"{program}: PostgreSQL's server programs are not installed (Debian: apt-get install postgresql)"
        )
    return found


def _as_db_account(command: list[str]) -> list[str]:
    return ["runuser", "-u", ROOT_DB_ACCOUNT, "--", *command] if os.geteuid() == 0 else command


def _run_postgres(command: list[str], what: str, log: Optional[Path] = None) -> str:
    result = subprocess.run(_as_db_account(command), capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
        if log is not None and log.is_file():
            detail += log.read_text(errors="replace").strip().splitlines()[-1:]
        raise UserError(f"{what}: {detail[-1] if detail else f'exit code {result.returncode}'}")
    return result.stdout


def _prepare_postgres_folder(folder: ServerFolder) -> None:
    """Make the folder PostgreSQL writes to, owned by the account it runs as, and check that
    account can reach it (a private parent folder would stop it with an obscure error)."""
    folder.postgres.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return
    shutil.chown(folder.postgres, ROOT_DB_ACCOUNT, ROOT_DB_ACCOUNT)
    folder.postgres.chmod(0o700)
    if subprocess.run(_as_db_account(["test", "-w", str(folder.postgres)])).returncode != 0:
        raise UserError(
            f"{folder.postgres}: the '{ROOT_DB_ACCOUNT}' account PostgreSQL runs as cannot reach it "
            "(PostgreSQL refuses to run as root); let others search its parent folders (chmod o+x) or run as a "
            "normal user"
        )


def _write_private(path: Path, secret: str) -> None:
    """A new file only its owner can read, from its first byte on."""
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        handle.write(secret + "\n")


def _initialise_cluster(folder: ServerFolder) -> None:
    """A new cluster with a generated password for its only role, listening on loopback TCP
    only (no Unix socket: nothing on the machine reaches it without the password)."""
    if not folder.password_file.is_file():
        _write_private(folder.password_file, secrets.token_urlsafe(24))
    building = folder.postgres / "data.initdb"
    shutil.rmtree(building, ignore_errors=True)  # left by an interrupted start
    password_copy = folder.postgres / ".pwfile"
    password_copy.unlink(missing_ok=True)
    _write_private(password_copy, folder.password())
    if os.geteuid() == 0:
        shutil.chown(password_copy, ROOT_DB_ACCOUNT, ROOT_DB_ACCOUNT)
    try:
        _run_postgres(
            [
                _postgres_bin("initdb"),
                "-D",
                str(building),
                "-U",
                DB_USER,
                f"--pwfile={password_copy}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
            ],
            "initdb",
        )
    finally:
        password_copy.unlink(missing_ok=True)
    with open(building / "postgresql.conf", "a") as conf:
        conf.write(f"\n# dcgan.tracking_server\nlisten_addresses = '{HOST}'\nunix_socket_directories = ''\n")
    building.rename(folder.cluster)


def _check_database(folder: ServerFolder, db_port: int) -> None:
    """Log in with the password file and create the database on first use; one line if the
    cluster rejects the password or does not answer."""
    import psycopg

    try:
        connection = psycopg.connect(
            host=HOST,
            port=db_port,
            user=DB_USER,
            password=folder.password(),
            dbname="postgres",
            connect_timeout=10,
            autocommit=True,
        )
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise UserError(f"PostgreSQL at {HOST}:{db_port} (password from {folder.password_file}): {reason}") from None
    with connection:
        if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone() is None:
            connection.execute(f"CREATE DATABASE {DB_NAME}")


def _postgres_running(folder: ServerFolder) -> bool:
    if not folder.cluster.is_dir():
        return False
    result = subprocess.run(
        _as_db_account([_postgres_bin("pg_ctl"), "status", "-D", str(folder.cluster)]), capture_output=True
    )
    return result.returncode == 0


def _pid_alive(pid: Optional[int]) -> bool:
    """True while ``pid`` runs; an exited process not yet reaped (a zombie: its parent, the
    ``start`` command, is gone, and a container's init may never reap it) counts as gone."""
    try:
        return bool(pid) and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _port_taken(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(
            socket.SOL_SOCKET, socket.SO_REUSEADDR, 1
        )  # as servers bind: a closed port's TIME_WAIT is free
        try:
            probe.bind((HOST, port))
        except OSError:
            return True
    return False


def _check_free(port: int, what: str, option: str) -> None:
    if _port_taken(port):
        raise UserError(
            f"{HOST}:{port}: the port for {what} is in use by another process; stop that process or choose "
            "another port "
            f"({option})"
        )


def _listens(pid: Optional[int], port: int) -> bool:
    """Whether the process ``pid`` or one of its children (the server's workers) listens on ``port``."""
    try:
        family = psutil.Process(pid)
        ours = {pid, *(child.pid for child in family.children(recursive=True))}
    except (psutil.Error, ValueError, TypeError):
        return False
    return any(
        c.pid in ours for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    )


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _serving(pid: Optional[int], port: int) -> bool:
    """Whether the server process ``pid`` is up, listening on ``port`` and answering there."""
    return _pid_alive(pid) and _listens(pid, port) and _healthy(f"http://{HOST}:{port}")


def start(root: Path, port: int = 5000, db_port: int = 5433, timeout: float = 120) -> str:
    """Start PostgreSQL and the MLflow server (whichever is not running); the tracking URI."""
    folder = ServerFolder(root.resolve())
    folder.root.mkdir(parents=True, exist_ok=True)
    state = folder.state()
    if (
        state
        and (state["port"], state["db_port"]) != (port, db_port)
        and (_postgres_running(folder) or _pid_alive(state.get("pid")))
    ):
        raise UserError(
            f"{folder.root}: already serving on ports {state['port']}/{state['db_port']}; stop it first to change them"
        )
    uri = f"http://{HOST}:{port}"
    server_running = _serving(state.get("pid"), port)
    postgres_running = _postgres_running(folder)
    # Both ports before anything starts: a half-started pair would be left behind.
    if not server_running:
        _check_free(port, "the MLflow server", "--port, or SERVER_PORT= for make server")
    if not postgres_running:
        _check_free(db_port, "PostgreSQL", "--db-port, or DB_PORT= for make server")
    _prepare_postgres_folder(folder)
    if not folder.cluster.is_dir():
        _initialise_cluster(folder)
    if not postgres_running:
        _run_postgres(
            [
                _postgres_bin("pg_ctl"),
                "start",
                "-D",
                str(folder.cluster),
                "-l",
                str(folder.postgres_log),
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {db_port}",
            ],
            f"PostgreSQL did not start on {HOST}:{db_port} (log: {folder.postgres_log})",
            folder.postgres_log,
        )
    _check_database(folder, db_port)
    if server_running:
        return uri
    folder.artifacts.mkdir(exist_ok=True)
    # The password reaches the server by environment, not on a command line others can read.
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": folder.database_uri(db_port)}
    with open(folder.mlflow_log, "ab") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                HOST,
                "--port",
                str(port),
                "--workers",
                "2",
                "--artifacts-destination",
                str(folder.artifacts),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    write_json(folder.state_file, {"port": port, "db_port": db_port, "pid": server.pid})
    deadline = time.monotonic() + timeout
    while not _serving(server.pid, port):  # healthy and ours: another process's server on the port is not it
        if server.poll() is not None or time.monotonic() > deadline:
            _stop_server(server.pid)
            lines = folder.mlflow_log.read_text(errors="replace").strip().splitlines() or ["no output"]
            raise UserError(f"the MLflow server did not start on {uri} (log: {folder.mlflow_log}): {lines[-1]}")
        time.sleep(0.5)
    return uri


def _stop_server(pid: Optional[int]) -> None:
    """SIGTERM the server's process group (it and its workers), SIGKILL after 15 s."""
    if not _pid_alive(pid):
        return
    for signum, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while _pid_alive(pid) and time.monotonic() < deadline:
            try:  # our child when started by this process: reap it
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.1)
        if not _pid_alive(pid):
            return


def stop(root: Path) -> None:
    """Stop the MLflow server, then PostgreSQL (fast shutdown: open sessions are cut, data kept)."""
    folder = ServerFolder(root.resolve())
    _stop_server(folder.state().get("pid"))
    if _postgres_running(folder):
        _run_postgres(
            [_postgres_bin("pg_ctl"), "stop", "-D", str(folder.cluster), "-m", "fast", "-w"], "PostgreSQL did not stop"
        )


def status(root: Path) -> str:
    folder = ServerFolder(root.resolve())
    state = folder.state()
    if not state:
        return f"{folder.root}: no server was started here"
    uri = f"http://{HOST}:{state['port']}"
    server = "running" if _serving(state.get("pid"), state["port"]) else "stopped"
    database = "running" if _postgres_running(folder) else "stopped"
    return (
        f"MLflow server {uri}: {server}; PostgreSQL {HOST}:{state['db_port']}: {database}; "
        f"artifacts in {folder.artifacts}"
    )
