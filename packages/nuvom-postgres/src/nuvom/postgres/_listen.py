"""LISTEN/NOTIFY: idle workers woken by new jobs, ``job.get()`` by stored results.

Each listener is a thread with a connection of its own (outside the pool) that
LISTENs on one channel. Notifications are delivered at commit, so a job queued
in a transaction that rolls back wakes nobody.

* :class:`Wakeups` (channel ``nuvom.<schema>.jobs``) counts notifications; a
  claimer reads the count before it claims and, finding nothing, waits for the
  count to move. A job committed after that read moves it, so none is missed.
* :class:`ResultWatcher` (channel ``nuvom.<schema>.done``) serves every waiting
  ``get()`` of the process: the statement that stores results notifies with the
  ids of those that someone waits for (``nuvom_result_waiters``), and the
  watcher reads those results in one query and hands each to its waiter.

A lost listener connection is reconnected with backoff; meanwhile claimers
poll and waiters look themselves, so the server's restart costs latency, not jobs.
"""

from __future__ import annotations

import _thread
import logging
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any

from nuvom.postgres._db import is_transient

if TYPE_CHECKING:
    import psycopg
    from nuvom.postgres._db import Database

__all__ = ["ResultWatcher", "Wakeups"]

log = logging.getLogger("nuvom.postgres")

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0
# How long one wait for a notification lasts before the thread looks whether it must stop.
_SLICE = 0.5


class _Listener:
    """A thread LISTENing on ``channel`` with a connection of its own."""

    def __init__(self, db: Database, channel: str, name: str) -> None:
        self.db, self.channel, self.name = db, channel, name
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._failing: str | None = None

    @property
    def listening(self) -> bool:
        return self._conn is not None

    def ensure(self) -> bool:
        """Start listening if not yet; ``True`` once LISTEN is in place (a
        notification sent after this returns ``True`` is received)."""
        if self._thread is not None:
            return self._conn is not None
        with self._lock:
            if self._thread is None and not self._stopping:
                try:
                    self._conn = self._connect()
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    log.debug("%s: not connected: %s", self.name, exc)
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        return self._conn is not None

    def _connect(self) -> psycopg.Connection[Any]:
        self.db.ready()  # what the listener reads must exist before it looks
        conn = self.db.connect()
        try:
            conn.execute(f'LISTEN "{self.channel}"')
        except BaseException:
            conn.close()
            raise
        return conn

    def _run(self) -> None:
        pause = _BACKOFF_FIRST
        try:
            while not self._stopping:
                conn = self._conn
                if conn is None:
                    try:
                        conn = self._conn = self._connect()
                    except Exception as exc:
                        # The outage is logged by the statements that meet it (Database.run).
                        log.debug("%s: reconnecting: %s", self.name, exc)
                        time.sleep(pause)
                        pause = min(pause * 2, _BACKOFF_MAX)
                        continue
                    pause = _BACKOFF_FIRST
                    self.reconnected()
                try:
                    payloads = [n.payload for n in conn.notifies(timeout=self.timeout(), stop_after=1)]
                    if not self.notified(conn, payloads):
                        return
                except Exception as exc:
                    if self._stopping:
                        return
                    if not is_transient(exc) and not conn.closed:
                        # Not the connection: said once, and looked at again after a pause.
                        failing = self._failing
                        self._failing = str(exc)
                        if failing != self._failing:
                            log.error("%s failed: %s: %s", self.name, type(exc).__name__, exc)
                        time.sleep(_BACKOFF_MAX)
                        continue
                    log.debug("%s: lost its connection: %s", self.name, exc)
                    self._conn = None
                    self.lost()
                    _close(conn)
        finally:
            conn, self._conn = self._conn, None
            if conn is not None:
                _close(conn)

    # -- what a listener does ---------------------------------------------------
    def timeout(self) -> float:
        return _SLICE

    def notified(self, conn: psycopg.Connection[Any], payloads: list[str]) -> bool:
        """Notifications arrived (``payloads``, maybe none: a slice ended);
        ``False`` ends the thread."""
        return True

    def reconnected(self) -> None:
        """LISTEN is in place again after a lost connection."""

    def lost(self) -> None:
        """The connection was lost."""

    def stop(self) -> None:
        """The thread ends within a slice and closes its connection (a close
        of the queue does not wait for it)."""
        self._stopping = True


def _close(conn: psycopg.Connection[Any]) -> None:
    try:
        conn.close()
    except Exception:
        pass


class Wakeups(_Listener):
    """Counts notifications of new jobs; claimers wait for the count to move."""

    def __init__(self, db: Database) -> None:
        super().__init__(db, db.sql.jobs_channel, "nuvom-postgres-wakeups")
        self.count = 0
        self._moved = threading.Condition()

    def notified(self, conn: psycopg.Connection[Any], payloads: list[str]) -> bool:
        if payloads:
            self._move()
        return True

    def reconnected(self) -> None:
        self._move()  # jobs may have been queued while nobody listened

    def _move(self) -> None:
        with self._moved:
            self.count += 1
            self._moved.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        """Until the count is no longer ``seen`` or ``timeout`` seconds passed."""
        with self._moved:
            if self.count == seen:
                self._moved.wait(timeout)


# With nobody waiting the watcher lingers this long for the next get() before it
# exits (closing its connection): a producer reading results one by one keeps
# one thread and one connection, not one per wait.
_LINGER = 2.0
# Waited ids are looked up again this long after they were registered, doubling
# up to NUVOM_POSTGRES_POLL_SECS: a result stored by a statement that began
# before the waiter was registered notified nobody.
_RECHECK_FIRST = 0.01


class ResultWatcher(_Listener):
    """One per result backend: every ``get()`` of the process waits here."""

    def __init__(self, db: Database, poll_secs: float) -> None:
        super().__init__(db, db.sql.done_channel, "nuvom-postgres-results")
        self.waiter = secrets.randbits(62)
        self.poll_secs = poll_secs
        self._state = threading.Lock()
        self._waiting: dict[str, list[_thread.LockType]] = {}
        self._found: dict[_thread.LockType, bytes] = {}
        self._recheck_at = 0.0
        self._recheck_every = _RECHECK_FIRST
        self._idle_since: float | None = None
        # Set when the thread lingered out (not by stop()): the next wait starts another.
        self._retired = False
        #: Lookups made (one query each), for the curious and the tests.
        self.lookups = 0
        r, w = db.sql.results, db.sql.waiters
        self._lookup = (
            f"WITH found AS (SELECT id, payload FROM {r} WHERE id = ANY(%s)), "
            f"gone AS (DELETE FROM {w} AS w USING found WHERE w.job_id = found.id AND w.waiter = %s) "
            "SELECT id, payload FROM found"
        )

    def ensure(self) -> bool:
        with self._lock:
            thread = self._thread
            if thread is not None and self._retired:
                thread.join()  # it lingered out and is closing its connection
                self._thread, self._stopping, self._retired = None, False, False
        return super().ensure()

    def register(self, job_id: str) -> _thread.LockType:
        """Await ``job_id``: the lock returned is released once it is found."""
        held = _thread.allocate_lock()
        held.acquire()
        with self._state:
            self._waiting.setdefault(job_id, []).append(held)
            self._idle_since = None
            self._recheck_every = _RECHECK_FIRST
            self._recheck_at = time.monotonic() + _RECHECK_FIRST
        return held

    def take(self, job_id: str, held: _thread.LockType) -> bytes | None:
        """Stop awaiting; the payload found for this waiter, if any."""
        with self._state:
            waiters = self._waiting.get(job_id)
            if waiters is not None and held in waiters:
                waiters.remove(held)
                if not waiters:
                    del self._waiting[job_id]
            if not self._waiting and self._idle_since is None:
                self._idle_since = time.monotonic()
            return self._found.pop(held, None)

    def awaits(self, job_id: str) -> bool:
        """Whether a waiter of this process still awaits ``job_id``."""
        with self._state:
            return job_id in self._waiting

    def timeout(self) -> float:
        with self._state:
            if self._waiting:
                return max(0.0, min(_SLICE, self._recheck_at - time.monotonic()))
        return min(_SLICE, _LINGER)

    def notified(self, conn: psycopg.Connection[Any], payloads: list[str]) -> bool:
        now = time.monotonic()
        with self._state:
            if not self._waiting:
                if self._idle_since is not None and now - self._idle_since >= _LINGER:
                    self._stopping = self._retired = True
                    return False
                return True
            ids: set[str] = set()
            if now >= self._recheck_at or "" in payloads:
                ids.update(self._waiting)
                self._recheck_every = min(self._recheck_every * 2, self.poll_secs)
                self._recheck_at = now + self._recheck_every
            for payload in payloads:
                ids.update(job_id for job_id in payload.split(",") if job_id in self._waiting)
        if ids:
            self.lookups += 1
            rows = conn.execute(self._lookup, (list(ids), self.waiter)).fetchall()
            self._hand_over(rows)
        return True

    def reconnected(self) -> None:
        with self._state:
            self._recheck_at = 0.0  # results stored while nobody listened

    def _hand_over(self, rows: list[Any]) -> None:
        if not rows:
            return
        with self._state:
            for job_id, payload in rows:
                for held in self._waiting.pop(job_id, ()):
                    self._found[held] = bytes(payload)
                    held.release()
