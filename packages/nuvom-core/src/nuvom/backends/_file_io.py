"""File primitives the file backends are built from.

Every write is a whole file written under a temporary name and moved into
place with :func:`os.replace`, so a reader sees the old content or the new,
never half of it, and a crash leaves at worst a stray temporary file. Moves
between directories of one data dir are atomic renames on POSIX and on
Windows (same volume); nothing here needs ``fcntl``.

Windows refuses to rename or delete a file that another process has open
(a sharing violation, ``PermissionError``). Readers hold files for
microseconds, so moves that must succeed retry briefly; claims treat the
error as "someone else is looking at it" and move on.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import secrets
import stat
import threading
import time
from typing import ClassVar

from nuvom.errors import BackendError

__all__ = [
    "NotAFile",
    "TempFiles",
    "quarantine",
    "read_bytes",
    "replace",
    "storage_error",
    "sweep_temp",
    "touch",
    "unlink",
    "write_file",
]

_WINDOWS = os.name == "nt"
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows would otherwise translate newlines
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_BINARY
_OVERWRITE_FLAGS = os.O_WRONLY | os.O_TRUNC | _O_BINARY
# Non-blocking: opening a FIFO that was put where a job file should be must not
# wait for a writer (the flag means nothing for regular files).
_READ_FLAGS = os.O_RDONLY | _O_BINARY | getattr(os, "O_NONBLOCK", 0)
_CHUNK = 1 << 16
# Backoff for sharing violations on Windows: about one second in all.
_RETRY_PAUSES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.3)


def read_bytes(path: str) -> bytes:
    """The whole content of ``path`` (``FileNotFoundError`` if it is gone)."""
    for pause in _RETRY_PAUSES if _WINDOWS else ():
        try:
            return _read(path)
        except PermissionError:
            time.sleep(pause)  # being replaced this instant
    return _read(path)


class NotAFile(OSError):
    """A path that should be a job file is a FIFO, a device or a directory."""


def _read(path: str) -> bytes:
    fd = os.open(path, _READ_FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotAFile(f"{path} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    try:
        chunk = os.read(fd, _CHUNK)
        if len(chunk) < _CHUNK:
            # A short read of a regular file means end of file: one syscall for
            # the common small job instead of a second read that returns b"".
            return chunk
        chunks = [chunk]
        while chunk:
            chunk = os.read(fd, _CHUNK)
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_file(path: str, data: bytes, *, create: bool = True) -> None:
    """Write ``data`` as the whole content of ``path`` (not atomic by itself).

    ``create=False`` overwrites an existing file and raises
    ``FileNotFoundError`` if there is none.
    """
    fd = os.open(path, _WRITE_FLAGS if create else _OVERWRITE_FLAGS, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def replace(src: str, dst: str) -> None:
    """``os.replace`` that waits out brief Windows sharing violations."""
    if not _WINDOWS:
        os.replace(src, dst)
        return
    for pause in _RETRY_PAUSES:
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            time.sleep(pause)
    os.replace(src, dst)


def touch(path: str) -> None:
    """Make an empty file at ``path`` (kept as it is if one is there)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | _O_BINARY, 0o644))


def unlink(path: str) -> bool:
    """Delete ``path``; ``False`` if it was already gone."""
    for pause in _RETRY_PAUSES if _WINDOWS else ():
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False
        except PermissionError:
            time.sleep(pause)
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


class TempFiles:
    """Temporary files of one process in one directory: unique names, atomic
    writes through them, and a pool of spare files to write into.

    Names carry the process id (a forked child must not reuse its parent's
    names) and a random token (two containers sharing a volume may both be
    pid 1).

    The pool exists because creating a file (allocating an inode) was measured
    as the costliest step of a write, about 6x overwriting an existing file on
    a busy ext4 disk: a file a backend is done with (an acknowledged claim) is
    moved here by :meth:`recycle` and overwritten by the next write. Share one
    instance per directory and process with :meth:`shared`.
    """

    # A worker writes results in groups of at most a claim batch or so; spares
    # beyond that would only sit in tmp/.
    _MAX_SPARES = 64
    _shared: ClassVar[dict[tuple[int, str], TempFiles]] = {}
    _shared_lock = threading.Lock()

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._token = secrets.token_hex(4)
        self._count = itertools.count()
        self._spares: list[str] = []

    @classmethod
    def shared(cls, directory: str) -> TempFiles:
        """The instance of this process for ``directory``."""
        key = (os.getpid(), os.path.abspath(directory))
        with cls._shared_lock:
            temp = cls._shared.get(key)
            if temp is None:
                temp = cls._shared[key] = cls(directory)
            return temp

    def new_path(self) -> str:
        return f"{self.directory}{os.sep}{os.getpid()}-{self._token}-{next(self._count)}.tmp"

    def write_atomic(self, path: str, data: bytes) -> None:
        """Make ``path`` hold exactly ``data``, all at once."""
        while self._spares:
            try:
                spare = self._spares.pop()
            except IndexError:  # another thread took the last one
                break
            try:
                write_file(spare, data, create=False)
                replace(spare, path)
                return
            except FileNotFoundError:
                continue  # swept as stale by a starting process: try another
            except BaseException:
                _discard(spare)
                raise
        tmp = self.new_path()
        try:
            write_file(tmp, data)
            replace(tmp, path)
        except BaseException:
            _discard(tmp)
            raise

    def recycle(self, path: str) -> bool:
        """Take ``path`` away (like :func:`unlink`) into the spare pool;
        ``False`` if it was already gone."""
        if len(self._spares) >= self._MAX_SPARES:
            return unlink(path)
        spare = self.new_path()
        try:
            replace(path, spare)
        except FileNotFoundError:
            return False
        self._spares.append(spare)
        return True

    def drop_spares(self) -> None:
        while self._spares:
            try:
                _discard(self._spares.pop())
            except IndexError:
                break


def _discard(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def quarantine(path: str, corrupt_dir: str, name: str, reason: str, log: logging.Logger) -> None:
    """Move an unreadable file to ``<corrupt_dir>/<name>.corrupt`` so that it
    neither crashes a worker nor blocks the files behind it."""
    target = os.path.join(corrupt_dir, f"{name}.corrupt")
    try:
        replace(path, target)
    except FileNotFoundError:
        return  # another process quarantined it first
    except OSError as exc:
        log.error("could not quarantine unreadable file %s (%s): %s", path, reason, exc)
        return
    log.warning("quarantined unreadable file %s as %s: %s", path, target, reason)


def sweep_temp(directory: str, max_age_secs: float = 3600.0) -> int:
    """Delete temporary files left by crashed writers; returns how many.

    Only files older than ``max_age_secs`` go: a live writer holds its
    temporary file for microseconds.
    """
    cutoff = time.time() - max_age_secs
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not entry.name.endswith(".tmp"):
            continue
        try:
            if entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except OSError:
            continue
    return removed


_REASONS = {
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "the disk is full (no space left on the device)",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def storage_error(exc: OSError, action: str, path: str) -> BackendError:
    """A :class:`BackendError` for a failed file operation that says what and why,
    so a user sees "read-only" or "disk full" rather than an errno."""
    reason = _REASONS.get(exc.errno or 0, exc.strerror or str(exc))
    return BackendError(
        f"file backend: {action} failed in {path}: {reason}; free space or fix the permissions "
        "of NUVOM_DATA_DIR (jobs already stored are kept)"
    )
