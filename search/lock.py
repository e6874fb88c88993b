"""One driver per study: an flock on results/<study>/driver.lock, held for the driver's life.

The kernel releases an flock when the last descriptor of its open file closes, which happens when
the driver exits however it exits (SIGKILL included), so a lock never outlives its driver and
there is nothing stale to clean up. The descriptor is close-on-exec and Ray starts its processes
with subprocess (which closes inherited descriptors), so Ray's processes, which may outlive a
killed driver, never hold it. The file holds the holder's PID, for the refusal message.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from recipe.config import RecipeError

LOCK_FILE = "driver.lock"


class StudyBusy(RecipeError):
    """Another driver runs this study now."""


def lock_path(root: Path) -> Path:
    return root / LOCK_FILE


def _busy(root: Path, fd: int, name: str) -> StudyBusy:
    pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
    return StudyBusy(f"{root}: study {name!r} is being run by another driver (PID {pid}); "
                     f"wait for it to end, or stop it (Ctrl-C or SIGTERM) and resume")


def check_free(root: Path, name: str) -> None:
    """Raise StudyBusy if another driver holds the study's lock; writes nothing."""
    try:
        fd = os.open(lock_path(root), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # never run, or run by a driver that has not taken its lock yet: take() decides
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(root, fd, name) from None
    finally:
        os.close(fd)  # releases the probe's shared lock


def take(root: Path, name: str) -> int:
    """Take the study's lock for the rest of this process's life; returns its descriptor (keep it open)."""
    root.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock_path(root), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = _busy(root, fd, name)
            os.close(fd)
            raise error from None
        try:
            if os.stat(lock_path(root)).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the file was removed (forget_if_empty) between our open and our lock: take the new one
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
