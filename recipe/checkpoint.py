"""Atomic writes and safe loading of checkpoints and result files."""
from __future__ import annotations

import errno
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from recipe.config import RecipeError

if TYPE_CHECKING:
    import torch

FORMAT = "cifar100-hpo/checkpoint/1"


class CheckpointError(RecipeError):
    """A checkpoint cannot be used; the message says which file and why."""


# Errors that say the file system has no room left: no space, or the user's quota used up.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(Exception):
    """A file could not be written for want of space; the previous version of it is untouched.

    Not a RecipeError: nothing was wrong with the input, and the same command (or --resume)
    succeeds once space is freed. The message names the file, the free space and the space needed.
    """

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


def is_disk_full(error: BaseException | None) -> bool:
    """Whether `error`, or an error it was raised from, says the disk (or the quota) is full.

    sqlite (so Optuna's storage) says "database or disk is full" rather than raising ENOSPC.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DiskFullError) or (isinstance(error, OSError) and error.errno in DISK_FULL):
            return True
        if "database or disk is full" in str(error) or "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def human_size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class _Tracked(io.RawIOBase):
    """A write-only file that counts the bytes it is given and remembers the OSError it met.

    torch.save reports a failed write as RuntimeError("[enforce fail at inline_container.cc] unexpected
    pos ..."), which does not say why; the OSError underneath (ENOSPC) is kept here. With no file
    behind it, it only counts: the size a write would need.
    """

    def __init__(self, f: io.RawIOBase | None = None) -> None:
        self.f, self.written, self.error = f, 0, None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.f is not None:
            try:
                self.f.write(data)
            except OSError as e:
                self.error = e
                raise
        n = memoryview(data).nbytes
        self.written += n
        return n


def _needed(write: Callable[[Any], None], written: int) -> tuple[int, str]:
    """The space a write needs: measured by running it again into a counter, else what it wrote before failing."""
    counter = _Tracked()
    try:
        write(counter)
    except Exception:
        counter.written = 0
    if counter.written > written:
        return counter.written, "the file's full size, measured"
    return written, "at least what was written before the disk filled"


def _disk_full(path: Path, write: Callable[[Any], None], written: int, error: BaseException) -> DiskFullError:
    free = shutil.disk_usage(path.parent).free
    needed, how = _needed(write, written)
    kept = f"the previous {path.name} is untouched" if path.exists() else "nothing was written"
    reason = os.strerror(error.errno) if isinstance(error, OSError) and error.errno else "No space left on device"
    return DiskFullError(f"{path}: {reason.lower()} ({human_size(free)} free there, {human_size(needed)} needed: "
                         f"{how}); {kept}", path)


def unwritable_reason(path: str | Path) -> str | None:
    """Why a directory could not be created or written to, or None if it can; nothing is written to find out.

    A path that is a file or lies under one, a directory this user may not write, or one on a
    read-only file system: each is found now, before a run or a study has written anything.
    """
    target = Path(path).absolute()
    probe = target
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent  # the nearest part of the path that exists: where a mkdir would start
    if not probe.is_dir():
        return "it is a file, not a directory" if probe == target else f"{probe} is a file, not a directory"
    if os.access(probe, os.W_OK | os.X_OK):
        return None
    if os.statvfs(probe).f_flag & os.ST_RDONLY:
        return f"{probe} is on a read-only file system"
    return f"{probe} is not writable by this user"


def current_umask() -> int:
    """The process's umask, read without setting it (os.umask would change it for every thread meanwhile)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc (not Linux): set it and put it back
    os.umask(mask)
    return mask


class WholeFile(io.RawIOBase):
    """A file written under a temporary name beside `path` and renamed into place by close().

    A reader (or a crash) never sees a half-written file: it sees the old one or the new one. A write
    that fails (a full disk) drops the temporary file at once and nothing is renamed into place; nor
    when the `with` block raises, nor for a file dropped without close() (arrow closes a file it
    copies only once all of it is written). The file gets the mode a plain open() would give it under
    the umask (mkstemp's is 0600, which would keep colleagues and web servers from reading a study's
    report on a shared disk). sync=True: on the disk before it is renamed into place.
    """

    def __init__(self, path: str | Path, sync: bool = False) -> None:
        super().__init__()
        self.path, self.sync, self.whole, self.file = Path(path), sync, True, None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self.file = os.fdopen(fd, "wb")
        os.fchmod(fd, 0o666 & ~current_umask())

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except BaseException:
            self.abandon()
            raise

    def abandon(self) -> None:
        """Drop what was written: the file at `path` stays as it was."""
        self.whole = False
        self.close()

    def close(self) -> None:
        if self.closed or self.file is None:  # closed, or mkstemp failed: nothing to put in place
            return
        try:
            try:
                if self.whole and self.sync:
                    self.file.flush()
                    os.fsync(self.file.fileno())
            finally:
                self.file.close()  # flushes: a full disk may show only now
        except BaseException:
            self.whole = False
            raise
        finally:
            if self.whole:
                os.replace(self.tmp, self.path)
            else:
                Path(self.tmp).unlink(missing_ok=True)
            super().close()

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is not None:
            self.abandon()
        else:
            self.close()

    def __del__(self) -> None:
        if not self.closed:
            self.whole = False
        super().__del__()


def atomic_write(path: str | Path, write: Callable[[io.RawIOBase], None]) -> None:
    """Write `path` whole or not at all (a WholeFile, synced to disk before it is renamed into place).

    A full disk (or quota) raises DiskFullError, the old file left as it was.
    """
    path = Path(path)
    tracked = _Tracked()
    try:
        with WholeFile(path, sync=True) as f:
            tracked.f = f
            write(tracked)
    except BaseException as e:
        cause = tracked.error if tracked.error is not None else e
        if isinstance(cause, OSError) and cause.errno in DISK_FULL:
            raise _disk_full(path, write, tracked.written, cause) from None
        raise


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


def save(path: str | Path, state: dict[str, Any]) -> None:
    import torch  # here, not at the top: a study's driver writes files through this module and trains nothing

    atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by save(), with weights_only=True (no code runs on load)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or not written by this recipe: {reason})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a checkpoint of this recipe (expected format {FORMAT!r})")
    return state
