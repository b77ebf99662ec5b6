"""TensorFlow's C++ log lines a user cannot act on, kept off the console
(``DCGAN_TF_LOGS=1`` shows them all).

TensorFlow writes them from C++ straight to the process's file descriptor 2, past Python's
logging and warnings, so they can only be dropped there: its start-up chatter (oneDNN
notices, absl's "before InitializeLog" warning) by importing it with descriptor 2 pointed
away, the known harmless lines of a training by ``drop_harmless_lines``. Which lines and
why: docs/outputs.md."""

from __future__ import annotations

import atexit
import fcntl
import importlib.abc
import importlib.util
import os
import re
import sys
import termios
import threading
import time
from typing import Callable

HARMLESS = re.compile(
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|E0000 [^\n]*node_def_util\.cc:\d+\] NodeDef mentions attribute use_unbounded_threadpool "
    rb"|E0000 [^\n]*meta_optimizer\.cc:\d+\] remapper failed: [^\n]*LeakyRelu"
)
# A line is held back until its end only while it may still become one of the above.
PREFIXES = (b"WARNING: All log messages before absl", b"E0000 ")


def _show_all() -> bool:
    return os.environ.get("DCGAN_TF_LOGS", "0") != "0"


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """TensorFlow's first import, wherever it happens, with descriptor 2 pointed away while its
    module runs. Installed instead of importing TensorFlow up front, so that a command which
    needs none of it (the tracking server's) starts in a fraction of a second."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            self.loader = spec.loader
            spec.loader = self
        return spec

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__spec__.loader = module.__loader__ = self.loader
        console, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        try:
            self.loader.exec_module(module)
        finally:
            os.dup2(console, 2)
            os.close(console)
            os.close(devnull)


def silence_tensorflow_import() -> None:
    """From now on, TensorFlow's import is silent: its start-up chatter comes ahead of any log
    level setting, and a one-line error should stay one line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if _show_all() or "tensorflow" in sys.modules:
        return
    if not any(isinstance(finder, _QuietTensorFlowImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


_filtering = threading.Event()  # once per process
_wait_until_drained: Callable[[], None] | None = None  # until what is in the filter's pipe is passed on
_ended = threading.Event()  # the process's last line is out: descriptor 2 goes nowhere from then on
_held_back = b""  # the start of a line that may still turn out harmless
_held_back_lock = threading.Lock()


def drop_harmless_lines() -> None:
    """From now on, lines of this process's (and its children's) descriptor 2 that match
    ``HARMLESS`` are dropped. Does nothing where descriptor 2 is not open."""
    if _show_all() or _filtering.is_set():
        return
    global _wait_until_drained
    _filtering.set()
    try:
        console = os.dup(2)
    except OSError:
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    pump = threading.Thread(target=_forward, args=(read_end, console), name="native-log-filter", daemon=True)
    pump.start()

    def drained() -> None:
        # Child processes (a sweep's workers) may still hold the pipe open, so wait until what
        # is in it has been read, not for its end.
        deadline = time.monotonic() + 5
        while _unread(read_end) and pump.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.01)  # the reader's last write

    def restore() -> None:
        if not _ended.is_set():
            sys.stderr.flush()
            os.dup2(console, 2)
            drained()
            _flush_held_back(console)  # children may hold the pipe open: its end may come too late

    _wait_until_drained = drained
    atexit.register(restore)


def _unread(fd: int) -> int:
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), sys.byteorder)


def end_of_output() -> None:
    """Nothing the process writes to descriptor 2 from now on reaches the console (where
    the filter runs): a one-line error stays the last line, not followed by TensorFlow's
    teardown reports of the same failure (a lost worker's coordination service)."""
    if _wait_until_drained is None or _ended.is_set():
        return
    sys.stderr.flush()
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    _wait_until_drained()
    _ended.set()


def _forward(read_end: int, console: int) -> None:
    global _held_back
    while chunk := os.read(read_end, 65536):
        if _ended.is_set():
            continue
        with _held_back_lock:
            try:
                _held_back = _pass_on(_held_back + chunk, console)
            except OSError:  # the console is gone: keep draining, so that writers never block
                _held_back = b""
    _flush_held_back(console)


def _flush_held_back(console: int) -> None:
    """Write out the unfinished line held back (the process's last, unended one)."""
    global _held_back
    with _held_back_lock:
        try:
            _write(console, _held_back)
        except OSError:
            pass
        _held_back = b""


def _pass_on(data: bytes, console: int) -> bytes:
    """Write out ``data`` but for harmless lines; return the unfinished line that may still
    turn out harmless (held back), or nothing."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        line = data[start:] if end < 0 else data[start : end + 1]
        if end < 0:
            if any(prefix.startswith(line) or line.startswith(prefix) for prefix in PREFIXES):
                return line
            _write(console, line)
            return b""
        if not HARMLESS.match(line):
            _write(console, line)
        start = end + 1
    return b""


def _write(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]
