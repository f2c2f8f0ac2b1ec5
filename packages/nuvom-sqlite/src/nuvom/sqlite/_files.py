"""Connections to one SQLite file, and what this process knows about the file,
shared by every :class:`~nuvom.sqlite._db.Database` opened on it (a worker has
two: its queue's and its results').

SQLite shares one WAL index (the ``-shm`` mapping) between all the connections
a process holds to a file, opened as the first of them could open it. So a
connection opened while the file was read-only (a read-only mount over the
data folder, a worker started before its volume was writable) makes every
later connection of the process to that file read-only too, even once the file
is writable again, until all of them are closed: a fresh process works, the old
one stays stuck. That sharing is per process, so this state is too: it cannot
live in one app or one backend. When the file is writable again,
:meth:`SharedFile.writable_again` retires every connection of every Database on
it; each is closed at once if idle, else by its thread as soon as the use in
progress ends, and the next use opens a new one.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable

__all__ = ["Connections", "Handle", "SharedFile", "shared_file"]

log = logging.getLogger("nuvom.sqlite")

#: How often a file found read-only is looked at again (when a write needs it).
RECHECK_SECS = 1.0


class Handle:
    """One connection, and whether another thread may close it.

    Its thread holds ``lock`` while it uses the connection (``depth`` counts
    nested uses). A retired handle is closed by whoever finds it unused: at
    once by :meth:`retire`, else by its thread when that use ends. Closing a
    connection under a running statement could crash the interpreter, so that
    is never done."""

    __slots__ = ("closed", "conn", "depth", "lock", "retired", "serial", "waits")

    _serials = itertools.count(1)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        #: Tells this connection from the ones before it (Database.data_version).
        self.serial = next(Handle._serials)
        self.lock = threading.RLock()
        self.depth = 0
        self.retired = False
        self.closed = False
        #: Whether the connection's busy timeout is the long one (Database.write
        #: sets it to zero, and leaves it so until a read needs it back).
        self.waits = True

    def retire(self) -> bool:
        """Mark for closing, and close now if unused; True if closed by this call."""
        self.retired = True
        if not self.lock.acquire(blocking=False):
            return False  # its thread is using it: closed when that use ends
        try:
            if self.depth or self.closed:
                return False  # in use further up this very thread's stack, or done
            self.closed = True
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
            return True
        finally:
            self.lock.release()


class Connections:
    """The connections of one Database: one per thread, and a second one per
    thread for :meth:`Database.write_one` (``kind`` "conn" or "nowait"),
    opened by ``opener(kind)`` on first use and again once retired."""

    def __init__(self, opener: Callable[[str], sqlite3.Connection]) -> None:
        self._opener = opener
        self._local = threading.local()
        self._lock = threading.Lock()
        self._handles: list[Handle] = []

    def __len__(self) -> int:
        return len(self._handles)

    def get(self, kind: str) -> Handle:
        """This thread's handle of ``kind``, opened anew if it was retired."""
        handle: Handle | None = getattr(self._local, kind, None)
        if handle is not None:
            if not handle.retired:
                return handle
            if handle.retire():  # ours and unused: closed now
                self._forget(handle)
        handle = Handle(self._opener(kind))
        with self._lock:
            self._handles.append(handle)
        setattr(self._local, kind, handle)
        return handle

    def use(self, kind: str = "conn") -> Handle:
        """This thread's handle, held against closing until :meth:`release`."""
        while True:
            handle = self.get(kind)
            handle.lock.acquire()
            if not handle.closed:
                handle.depth += 1
                return handle
            handle.lock.release()  # retired and closed since: open another

    def release(self, handle: Handle) -> None:
        handle.depth -= 1
        handle.lock.release()
        # Looked at after releasing: a retire() that found the lock held has set
        # the flag by then, and left the closing to this thread.
        if handle.retired and not handle.depth and handle.retire():
            self._forget(handle)

    def retire_all(self) -> int:
        """Retire every thread's connections; returns how many were closed now."""
        with self._lock:
            handles = list(self._handles)
        closed = 0
        for handle in handles:
            if handle.retire():
                self._forget(handle)
                closed += 1
        return closed

    def release_thread(self) -> None:
        """Close this thread's connections (a helper thread about to exit)."""
        for kind in ("conn", "nowait"):
            handle: Handle | None = getattr(self._local, kind, None)
            if handle is not None:
                setattr(self._local, kind, None)
                if handle.retire():
                    self._forget(handle)

    def _forget(self, handle: Handle) -> None:
        with self._lock:
            if handle in self._handles:
                self._handles.remove(handle)


class SharedFile:
    """The state of one SQLite file in this process (see the module docstring)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.connections: weakref.WeakSet[Connections] = weakref.WeakSet()
        #: Writes are refused without trying until the file is seen writable:
        #: set by a read-only open or by SQLITE_READONLY.
        self.readonly = False
        #: A refused write was logged; the first write that works once the file
        #: was seen writable again (``_reopened``) logs the recovery. A write that
        #: works through a connection opened earlier does not: it may go on
        #: working under a read-only mount placed since.
        self.refusing = False
        self._reopened = False
        self._next_check = 0.0

    def writable_again(self, path: os.PathLike[str]) -> bool:
        """Read-only until now: is the file writable again? Looked at at most
        once a second; if so, every connection of this process to it is retired,
        so that the next ones share nothing with those opened while it was not."""
        now = time.monotonic()
        with self.lock:
            if now < self._next_check:
                return False
            self._next_check = now + RECHECK_SECS
        if not (os.access(path, os.W_OK) and os.access(os.path.dirname(path), os.W_OK)):
            return False
        closed = sum(c.retire_all() for c in list(self.connections))
        self._reopened = True
        self.readonly = False
        log.debug("SQLite database %s looks writable: %d connection(s) closed, reopening", path, closed)
        return True

    def mark_readonly(self) -> None:
        """A connection was opened read-only, or SQLite refused a write."""
        self._reopened = False
        self.readonly = True

    def refuse(self, path: os.PathLike[str]) -> None:
        """Record that a write was refused: logged once per read-only spell."""
        with self.lock:
            first, self.refusing = not self.refusing, True
        if first:
            log.info(
                "SQLite database %s is read-only: writes are refused, and the file looked at again once a second",
                path,
            )

    def wrote(self, path: os.PathLike[str]) -> None:
        """A write worked while :attr:`refusing`: the spell is over (logged once)."""
        with self.lock:
            if not (self.refusing and self._reopened):
                return
            self.refusing = False
        log.warning("SQLite database %s is writable again", path)


_files: weakref.WeakValueDictionary[str, SharedFile] = weakref.WeakValueDictionary()
_files_lock = threading.Lock()


def shared_file(path: os.PathLike[str]) -> SharedFile:
    """The one :class:`SharedFile` of ``path`` in this process (by real path: SQLite
    shares by file, not by name)."""
    key = os.path.realpath(path)
    with _files_lock:
        found = _files.get(key)
        if found is None:
            found = _files[key] = SharedFile(key)
        return found
