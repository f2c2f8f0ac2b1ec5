"""One watcher per result backend for every ``job.get()`` waiting in this process.

Another process's commit cannot wake a thread here, so someone must look; a
poller per waiting job (the earlier way) made N waiters N readers of the same
file. Here one thread reads ``PRAGMA data_version`` (a counter in shared
memory: a few microseconds, no lock), and only when it moved looks up every
waited id with one query, hands each waiter the stored bytes of its job
through a held lock, and goes away (closing its connection) once nobody has
waited for a while.
"""

from __future__ import annotations

import _thread
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite3

    from nuvom.sqlite._db import Database

__all__ = ["ResultWatcher"]

log = logging.getLogger("nuvom.sqlite")

# While jobs are awaited the counter is read every _FIRST s after a change,
# the pause doubling up to _MAX while nothing changes (an idle file). Not
# faster: on 2 cores the watcher's looks take CPU from the worker it waits for.
_FIRST = 0.001
_MAX = 0.02
# Ids per lookup: well under SQLite's limit of host parameters.
_CHUNK = 500
# With nobody waiting the thread lingers this long for the next get() before
# it exits (closing its connection): a producer reading results one by one
# keeps one thread and one connection, not one per wait.
_LINGER = 2.0


class ResultWatcher:
    def __init__(self, db: Database, table: str = "nuvom_results") -> None:
        self.db = db
        self._select = f"SELECT id, payload FROM {table} WHERE id IN "
        self._lock = threading.Lock()
        self._new_waiter = threading.Condition(self._lock)
        self._waiting: dict[str, list[_thread.LockType]] = {}
        # The payload found for each woken waiter, by its lock: several get()s
        # of one job each take their own.
        self._found: dict[_thread.LockType, bytes] = {}
        self._running = False
        # A waiter registered since the last lookup: look even if the file has
        # not changed (its job may have been stored just before it registered).
        self._fresh = False

    def wait_for(self, job_id: str, timeout: float | None) -> bytes | None:
        """The stored payload of ``job_id`` once a lookup finds it; ``None`` when
        ``timeout`` seconds pass first, or the watcher stopped on an error (the
        caller then reads the store itself, which raises the error)."""
        held = _thread.allocate_lock()
        held.acquire()
        with self._lock:
            self._waiting.setdefault(job_id, []).append(held)
            self._fresh = True
            if self._running:
                self._new_waiter.notify()
            else:
                self._running = True
                threading.Thread(target=self._run, name="nuvom-sqlite-results-watcher", daemon=True).start()
        held.acquire(timeout=-1 if timeout is None else max(0.0, timeout))
        with self._lock:
            waiters = self._waiting.get(job_id)
            if waiters is not None and held in waiters:
                waiters.remove(held)
                if not waiters:
                    del self._waiting[job_id]
            return self._found.pop(held, None)

    def _run(self) -> None:
        seen: int | None = None
        pause = _FIRST
        try:
            while True:
                with self._lock:
                    if not self._waiting:
                        self._new_waiter.wait(_LINGER)
                        if not self._waiting:
                            self._running = False
                            return
                        seen = None  # the file may have changed while idle
                    fresh, self._fresh = self._fresh, False
                    ids = list(self._waiting)
                version = self.db.data_version()
                if fresh or version != seen:
                    seen = version
                    pause = _FIRST
                    self._hand_over(self._lookup(ids))
                else:
                    pause = min(pause * 2, _MAX)
                with self._lock:
                    if not self._fresh:  # a new waiter cuts the pause short
                        self._new_waiter.wait(pause)
        except BaseException as exc:
            # Every waiter reads the store itself and meets the error there.
            log.debug("result watcher of %s stopped: %s", self.db.path, exc)
            with self._lock:
                self._running = False
                waiting, self._waiting = self._waiting, {}
            for waiters in waiting.values():
                for held in waiters:
                    held.release()
        finally:
            self.db.release_thread()

    def _lookup(self, ids: Sequence[str]) -> list[tuple[str, bytes]]:
        def read(conn: sqlite3.Connection) -> list[tuple[str, bytes]]:
            rows: list[tuple[str, bytes]] = []
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                rows += conn.execute(f"{self._select}({','.join('?' * len(chunk))})", chunk).fetchall()
            return rows

        return self.db.read(read, "waiting for results")

    def _hand_over(self, rows: list[tuple[str, bytes]]) -> None:
        if not rows:
            return
        with self._lock:
            for job_id, payload in rows:
                for held in self._waiting.pop(job_id, ()):
                    self._found[held] = payload
                    held.release()
