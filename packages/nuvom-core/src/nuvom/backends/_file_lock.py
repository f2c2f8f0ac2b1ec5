"""Lock files: mutual exclusion between the processes of one host, with
nothing but ``O_CREAT | O_EXCL`` (no ``fcntl``, no ``msvcrt``).

A lock is a file created exclusively and holding its owner's stamp: process
id, pid namespace, creation time and a random token. Of several processes
creating it, exactly one succeeds, on POSIX and on Windows; the others wait,
polling. A lock is released by deleting it, if it still holds its owner's stamp.

A lock left by a killed process is taken for stale, and removed, when

* its owner's process is gone (POSIX, same pid namespace: ``kill(pid, 0)``
  finds no process; Windows offers no such probe without a handle, and a
  container sharing the folder has other pids, so there the next rule alone
  decides), or
* it is older than ``stale_secs`` (a process frozen that long while holding
  it loses it: the one case where two holders may overlap), or
* it is empty and a second old (its owner died between creating and writing it).

Removing a stale lock is itself done under a second lock (``<path>.break``,
stale after a few seconds), after reading the lock again: two processes that
find the same stale lock cannot remove a fresh one in turn.
"""

from __future__ import annotations

import os
import secrets
import time
from types import TracebackType

from nuvom.backends._file_io import read_bytes, unlink
from nuvom.errors import BackendError

__all__ = ["LockFile"]

_O_BINARY = getattr(os, "O_BINARY", 0)
_CREATE_EXCL = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY
# An empty lock this old was left by an owner that died before writing its stamp.
_HALF_WRITTEN_SECS = 1.0
# A breaker lock this old was left by a breaker that died mid-way.
_BREAKER_STALE_SECS = 5.0
_FIRST_PAUSE = 0.0002
_MAX_PAUSE = 0.005


def _pid_namespace() -> str:
    """Who may judge a pid of this host: processes of one pid namespace (Linux
    containers each have their own); ``""`` where there is no such notion."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    if os.name == "nt" or pid <= 0:
        return True  # os.kill(pid, 0) would end the process on Windows: the age rule decides there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process, say: alive
    return True


class LockFile:
    """``with LockFile(path): ...`` holds the lock for the block."""

    def __init__(self, path: str, *, stale_secs: float = 10.0, wait_secs: float = 30.0) -> None:
        self.path = path
        self.stale_secs = stale_secs
        self.wait_secs = wait_secs
        self._stamp = b""

    def __enter__(self) -> LockFile:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait_secs
        pause = _FIRST_PAUSE
        stamp = f"{os.getpid()} {_pid_namespace()} {time.time():.6f} {secrets.token_hex(8)}".encode()
        while True:
            try:
                fd = os.open(self.path, _CREATE_EXCL, 0o644)
            except FileExistsError:
                if self._break_if_stale():
                    continue
                if time.monotonic() > deadline:
                    raise BackendError(
                        f"file backend: the lock {self.path} has been held for over {self.wait_secs:.0f} s "
                        f"({self._owner_text()}); if no nuvom process uses this data dir, delete the file"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, _MAX_PAUSE)
                continue
            except FileNotFoundError:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                continue
            try:
                os.write(fd, stamp)
            finally:
                os.close(fd)
            self._stamp = stamp
            return

    def release(self) -> None:
        # Only our own lock: one taken from this process for stale (frozen past
        # stale_secs) belongs to another process now.
        try:
            if read_bytes(self.path) == self._stamp:
                unlink(self.path)
        except FileNotFoundError:
            pass
        self._stamp = b""

    def _stale(self, content: bytes, mtime: float) -> bool:
        parts = content.split()
        if len(parts) != 4:
            return time.time() - mtime > _HALF_WRITTEN_SECS
        try:
            pid, created = int(parts[0]), float(parts[2])
        except ValueError:
            return time.time() - mtime > _HALF_WRITTEN_SECS
        if time.time() - created > self.stale_secs:
            return True
        return parts[1].decode(errors="replace") == _pid_namespace() != "" and not _alive(pid)

    def _break_if_stale(self) -> bool:
        """Remove the lock if it is stale; ``True`` if it is gone (try again now)."""
        try:
            st = os.stat(self.path)
            content = read_bytes(self.path)
        except FileNotFoundError:
            return True
        if not self._stale(content, st.st_mtime):
            return False
        breaker = self.path + ".break"
        try:
            os.close(os.open(breaker, _CREATE_EXCL, 0o644))
        except FileExistsError:
            try:
                if time.time() - os.stat(breaker).st_mtime > _BREAKER_STALE_SECS:
                    unlink(breaker)
            except FileNotFoundError:
                pass
            return False
        try:
            # Still the same file, with the same stamp: nobody took it meanwhile.
            again = os.stat(self.path)
            if os.path.samestat(again, st) and again.st_mtime_ns == st.st_mtime_ns and read_bytes(self.path) == content:
                unlink(self.path)
            return True
        except FileNotFoundError:
            return True
        finally:
            unlink(breaker)

    def _owner_text(self) -> str:
        try:
            parts = read_bytes(self.path).split()
        except OSError:
            return "owner unknown"
        return f"by process {parts[0].decode(errors='replace')}" if parts else "owner unknown"
