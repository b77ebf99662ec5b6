"""Sharing through a DVC remote over SSH: a real OpenSSH server on a 127.0.0.1 port with a
throwaway key, a bare git repository on disk as the git remote, and two clones."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, dvc_project, free_port, needs_package, sh, venv_env

pytestmark = pytest.mark.slow

PROFILE = [*TINY, "data.limit=256"]


class SSHServer:
    """``sshd`` in the foreground, only for a throwaway key, on 127.0.0.1."""

    def __init__(self, folder: Path):
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        needs_package("openssh-server", Path(sshd).is_file(), "sshd serves the DVC SSH remote")
        self.folder, self.port, self.user = folder, free_port(), getpass.getuser()
        for key in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key)], check=True)
        shutil.copy(folder / "client_key.pub", folder / "authorized_keys")
        (folder / "sshd_config").write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {folder / 'host_key'}",
                    f"PidFile {folder / 'sshd.pid'}",
                    f"AuthorizedKeysFile {folder / 'authorized_keys'}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "StrictModes no",
                    "UsePAM no",
                    "Subsystem sftp internal-sftp",
                    "",
                ]
            )
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege-separation folder
        self.log = open(folder / "sshd.log", "w")
        self.process = subprocess.Popen(
            [sshd, "-D", "-e", "-f", str(folder / "sshd_config")], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, (folder / "sshd.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "sshd did not listen within 30 s"
                time.sleep(0.1)

    @property
    def key(self) -> Path:
        return self.folder / "client_key"

    def url(self, path: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """A project that ran its pipeline, pushed to a bare git repo and, with `dvc push`, to
    an SSH remote; the remote's folder; the server."""
    root = tmp_path_factory.mktemp("team")
    (root / "sshd").mkdir()
    ssh = SSHServer(root / "sshd")
    remote = root / "dvc-remote"
    project = dvc_project(root / "alice", PROFILE)
    sh("git", "init", "-q", "--bare", str(root / "origin.git"), cwd=root)
    sh("git", "remote", "add", "origin", str(root / "origin.git"), cwd=project)
    # What the team shares (the remote's URL) is committed; each member's key stays local.
    sh("dvc", "remote", "add", "-d", "team", ssh.url(remote), cwd=project)
    sh("dvc", "remote", "modify", "--local", "team", "keyfile", str(ssh.key), cwd=project)
    sh("dvc", "repro", cwd=project)
    sh("git", "add", "-A", cwd=project)
    sh("git", "commit", "-qm", "trained", cwd=project)
    sh("git", "push", "-q", "origin", "HEAD:main", cwd=project)
    assert "files pushed" in sh("dvc", "push", cwd=project)
    yield project, remote, ssh
    ssh.stop()


def clone(team_root: Path, name: str, key: Path) -> Path:
    """Another member's clone of the git remote, with their own key configured."""
    target = team_root / name
    sh("git", "clone", "-q", "--branch", "main", str(team_root / "origin.git"), str(target), cwd=team_root)
    sh("git", "config", "user.email", f"{name}@localhost", cwd=target)
    sh("git", "config", "user.name", name, cwd=target)
    sh("dvc", "remote", "modify", "--local", "team", "keyfile", str(key), cwd=target)
    return target


def remote_objects(remote: Path) -> list[Path]:
    """The remote's objects; temp files a killed upload leaves (``.*.tmp``, renamed to an
    object's name only once complete) are not objects."""
    return [path for path in (remote / "files/md5").rglob("*") if path.is_file() and not path.name.startswith(".")]


def remote_is_consistent(remote: Path) -> int:
    """Every object in the remote holds what its name (its MD5) says; their number."""
    objects = remote_objects(remote)
    for path in objects:
        assert hashlib.md5(path.read_bytes()).hexdigest() == path.parent.name + path.name.removesuffix(".dir"), path
    return len(objects)


def test_a_fresh_clone_pulls_everything_and_repro_has_nothing_to_do(team):
    project, remote, ssh = team
    bob = clone(project.parent, "bob", ssh.key)
    assert "Everything is up to date" not in sh("dvc", "pull", cwd=bob)
    for output in ("models/generator.keras", "models/run.json", "data/prepared/mnist/manifest.json"):
        assert (bob / output).read_bytes() == (project / output).read_bytes()
    repro = sh("dvc", "repro", cwd=bob)
    assert "Running stage" not in repro and "Data and pipelines are up to date." in repro
    assert "Cache and remote 'team' are in sync." in sh("dvc", "status", "--cloud", cwd=bob)
    remote_is_consistent(remote)


def test_an_experiment_travels_between_clones(team):
    project, remote, ssh = team
    # `dvc exp run -S` composes params.yaml from conf/ and the -S overrides alone: all of them.
    sh("dvc", "exp", "run", "--name", "seed-5", *(f"-S{o}" for o in [*PROFILE, "train.seed=5"]), cwd=project)
    sh("dvc", "exp", "push", "origin", "seed-5", cwd=project)  # git refs to origin, outputs to the DVC remote
    carol = clone(project.parent, "carol", ssh.key)
    sh("dvc", "exp", "pull", "origin", "seed-5", cwd=carol)
    assert "seed-5" in sh("dvc", "exp", "list", "--name-only", cwd=carol)
    sh("dvc", "exp", "apply", "seed-5", cwd=carol)
    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=project))
    theirs = next(
        exp["revs"][0]["data"]
        for baseline in shown
        for exp in baseline.get("experiments") or []
        if exp.get("name") == "seed-5"
    )
    assert json.loads((carol / "reports/metrics.json").read_text()) == theirs["metrics"]["reports/metrics.json"]["data"]
    assert (carol / "models/generator.keras").is_file()
    assert "Running stage" not in sh("dvc", "repro", cwd=carol)


def test_a_push_killed_half_way_and_retried_leaves_the_remote_consistent(team):
    project, remote, ssh = team
    bulk = project / "bulk"  # 24 x 8 MB of noise: a push long enough to kill in the middle
    bulk.mkdir()
    rng = np.random.default_rng(0)
    for n in range(24):
        (bulk / f"part-{n:02d}.bin").write_bytes(rng.bytes(8 << 20))
    sh("dvc", "add", "bulk", cwd=project)
    before = remote_is_consistent(remote)
    push = subprocess.Popen(
        ["dvc", "push"], cwd=project, env=venv_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while len(remote_objects(remote)) < before + 4 and push.poll() is None:
        time.sleep(0.01)
    push.send_signal(signal.SIGKILL)
    push.wait()
    interrupted = remote_is_consistent(remote)
    assert before < interrupted < before + 25, "the push was not caught half-way"
    assert "new:" in sh("dvc", "status", "--cloud", cwd=project)

    assert f"{before + 25 - interrupted} files pushed" in sh("dvc", "push", cwd=project)
    assert remote_is_consistent(remote) == before + 25
    assert "Cache and remote 'team' are in sync." in sh("dvc", "status", "--cloud", cwd=project)
    sh("git", "add", "bulk.dvc", ".gitignore", cwd=project)
    sh("git", "commit", "-qm", "bulk", cwd=project)
    sh("git", "push", "-q", "origin", "HEAD:main", cwd=project)
    dave = clone(project.parent, "dave", ssh.key)
    sh("dvc", "pull", "bulk", cwd=dave)
    assert all((dave / "bulk" / part.name).read_bytes() == part.read_bytes() for part in bulk.iterdir())
