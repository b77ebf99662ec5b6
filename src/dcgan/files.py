"""Atomic file writes (a reader sees the old file or the complete new one, never a part), the
lock that lets one process at a time work in an output folder, and the per-user cache folder."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from dcgan.errors import UserError

CACHE_ENV = "DCGAN_CACHE_DIR"


def cache_dir() -> Path:
    """What this user's runs keep between projects: ``$DCGAN_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/dcgan`` (``~/.cache/dcgan``)."""
    base = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dcgan"
    return Path(base).expanduser()


def atomic_write(path: Path, write) -> None:
    """Call ``write(file_object)`` on a temp file beside ``path``, then rename it to ``path``."""

    def to_file(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            write(handle)

    replace_together({path: to_file})


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


def json_text(values: dict) -> str:
    return json.dumps(values, indent=2, sort_keys=True) + "\n"


def write_json(path: Path, values: dict) -> None:
    atomic_write_text(path, json_text(values))


def replace_together(writers: dict[Path, Callable[[Path], None]]) -> None:
    """Write a set of outputs: ``writers`` maps each path to a function writing its new
    content to a given temp path beside it (same suffix: Keras wants ``.keras``). Only once
    all are written are they renamed into place (renames need no space), so a failure or a
    kill while writing (a full disk, Ctrl-C) leaves every previous file as it was."""
    temps: list[Path] = []
    try:
        for path, write in writers.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
            os.close(fd)
            temps.append(Path(name))
            try:
                write(temps[-1])
                with open(temps[-1], "rb") as written:
                    os.fsync(written.fileno())
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, str(path)) from None
            os.chmod(temps[-1], 0o644)  # mkstemp makes files private; outputs are for the whole project
        for tmp, path in zip(temps, writers):
            os.replace(tmp, path)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def save_model(model, path: Path) -> None:
    """``model.save`` (Keras) to a temp name beside ``path``, then renamed into place."""
    replace_together({path: model.save})


def check_writable(*folders: Path) -> None:
    """Fail before any work if an output folder cannot be created or written to."""
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as exc:
            raise UserError(f"{folder}: output folder is not writable ({exc.strerror})") from None


@contextmanager
def staged_outputs(folder: Path) -> Iterator[Path]:
    """A temp folder beside ``folder`` to write a set of outputs into; once all are written
    they are renamed into ``folder`` (renames need no space), so a failure half-way (a full
    disk) leaves none of the new set there, and the temp folder is removed either way."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        yield staging
        for path in sorted(staging.iterdir()):
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def locked(folder: Path, shared: bool = False, wait: bool = False) -> Iterator[None]:
    """Hold an OS-level lock on ``folder`` (``shared``: as one of several readers) for the
    duration, or fail at once naming the process that holds it (``wait``: wait for it
    instead). The lock is the file ``.<folder name>.lock`` beside it; the kernel releases it
    when its holder exits, so a ``kill -9`` cannot leave it stuck, and the last holder
    removes the file."""
    lock_file = folder.parent / f".{folder.name}.lock"
    check_writable(lock_file.parent)
    while True:
        handle = open(lock_file, "a+")
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UserError(
                f"{folder}: in use by another process ({holder}); wait for it to finish or stop it"
            ) from None
        if _same_file(handle, lock_file):
            break
        handle.close()  # its last holder removed that file meanwhile: lock the one at the path now
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}: {' '.join(sys.argv)[:200]}")
        handle.flush()
        yield
    finally:
        try:  # the last holder (no one else holds it, shared or not) removes the file
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock_file.unlink(missing_ok=True)
        except BlockingIOError:
            pass
        handle.close()  # releases the lock


def _same_file(handle, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False
