"""Exclusive locks on the paths a job writes, and whether their owner still runs.

A lock is a sibling file ``.<name>.dgmm-lock`` (a sibling, so a directory
swapped in by an atomic replace keeps its lock), created with
``O_CREAT | O_EXCL`` (atomic on local file systems) and holding a JSON record
of its owner: host, process id, the process's start time and its command
line. A lock whose owner ran on this host and is gone (no such process, or
one started at another time: its id was reused) is stale: it is broken with
a warning. Locks are re-entrant within a process, so a command line that
locks its outputs can call library code that locks them again.

The owner record is also what marks dgmm's own temporaries, so the next
command can tell leftovers of a dead run from the work of a live one
(:func:`alive`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

LOCK_SUFFIX = ".dgmm-lock"
# A lock file still empty after this long was left by a process killed between
# creating it and writing its record.
_EMPTY_GRACE_S = 5.0

_held: dict[str, int] = {}
_held_guard = threading.Lock()


class PathLockedError(RuntimeError):
    """Another live dgmm run holds the lock on a path."""


class StaleLockWarning(UserWarning):
    """A lock left by a process that no longer runs was broken."""


def owner() -> dict:
    """This process as a lock's owner: host, pid, start time and command line."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": psutil.Process().create_time(),
        "command": " ".join(sys.argv)[:300],
    }


def alive(record: dict) -> bool:
    """Whether the process ``record`` (from :func:`owner`) describes may still run.

    Only a process of this host can be found gone; one elsewhere counts as
    alive, since nothing here can tell.
    """
    if record.get("host") != socket.gethostname():
        return True
    pid = record.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        started = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.Error:  # e.g. access denied: it exists
        return True
    expected = record.get("started")
    return not isinstance(expected, (int, float)) or abs(started - expected) < 1.0


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}{LOCK_SUFFIX}")


def _read(lock: Path) -> dict | None:
    """The record in a lock file; None while it is empty or unreadable."""
    try:
        record = json.loads(lock.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _describe(record: dict) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("started", 0)))
    return f"process {record.get('pid')} on host {record.get('host')}, started {when}"


def acquire(path: str | os.PathLike) -> Path:
    """Take the lock on ``path`` (re-entrant in this process); return the lock file.

    Raises
    ------
    PathLockedError
        A live run holds it (the message names that run and the lock file).
    """
    lock = lock_path(path)
    key = os.path.realpath(lock)
    with _held_guard:
        if key in _held:
            _held[key] += 1
            return lock
    mine = json.dumps(owner())
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            other = _read(lock)
            if other is None:  # being written, or its writer died before writing
                try:
                    age = time.time() - lock.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age < _EMPTY_GRACE_S:
                    time.sleep(0.05)
                    continue
                other = {}
            if other and alive(other):
                raise PathLockedError(
                    f"{path} is in use by another dgmm run ({_describe(other)}: "
                    f"{other.get('command', '?')}); wait for it to finish, or remove {lock} "
                    "if that run is gone") from None
            if _break(lock, other):
                warnings.warn(f"broke the stale lock {lock} of "
                              f"{_describe(other) if other else 'a run'} that no longer runs",
                              StaleLockWarning, stacklevel=2)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(mine)
            f.flush()
            os.fsync(f.fileno())
        with _held_guard:
            _held[key] = 1
        return lock


def _break(lock: Path, stale: dict) -> bool:
    """Remove ``lock`` if it still holds ``stale``; whether it did.

    The lock is first renamed to a name of our own, so that of two runs
    breaking it at once only one succeeds, and a fresh lock taken by the
    other in between is put back rather than removed.
    """
    aside = lock.with_name(f"{lock.name}.broken-{os.getpid()}-{threading.get_ident()}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return False
    if (_read(aside) or {}) != stale:
        with contextlib.suppress(FileExistsError):
            os.link(aside, lock)
        aside.unlink()
        return False
    aside.unlink()
    return True


def release(path: str | os.PathLike) -> None:
    """Give back one hold of the lock on ``path``; the last one removes the lock file."""
    lock = lock_path(path)
    key = os.path.realpath(lock)
    with _held_guard:
        _held[key] -= 1
        if _held[key]:
            return
        del _held[key]
    record = _read(lock)
    if record is not None and record.get("pid") == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


@contextlib.contextmanager
def locked(*paths: str | os.PathLike | None) -> Iterator[None]:
    """Hold the locks on ``paths`` (None entries skipped) for the ``with`` block."""
    taken = []
    try:
        for path in paths:
            if path is not None:
                acquire(path)
                taken.append(path)
        yield
    finally:
        for path in reversed(taken):
            release(path)


def holding(param: str) -> Callable:
    """Decorate a function to hold the lock on the path in its keyword ``param`` while it runs.

    Nothing is locked when the path is None, remote, or in a directory that
    does not exist (the function's own checks then refuse it).
    """

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            path = kwargs.get(param)
            local = path is not None and "://" not in str(path) and Path(path).parent.is_dir()
            with locked(path if local else None):
                return fn(*args, **kwargs)

        return run

    return decorate
