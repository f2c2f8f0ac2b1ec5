"""The result backend: finished jobs in the ``nuvom_results`` table."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nuvom import serialization
from nuvom.job import Job, JobStatus
from nuvom.plugins.contracts import BaseResultBackend, Cursor
from nuvom.sqlite._db import Database
from nuvom.sqlite._settings import SQLiteSettings, load_sqlite_settings, resolve_paths
from nuvom.sqlite._watch import ResultWatcher

if TYPE_CHECKING:
    import sqlite3

    from nuvom.config import Settings

__all__ = ["SQLiteResultBackend"]

log = logging.getLogger("nuvom.sqlite")

INSERT_RESULT = (
    "INSERT OR REPLACE INTO nuvom_results (id, func_name, status, attempts, worker_id, created_at, "
    "started_at, finished_at, error_type, error_message, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

# Pruning deletes at most this many rows per transaction, so that a first
# prune of a large table never holds the write lock for long.
_PRUNE_CHUNK = 5000


def result_row(job: Job) -> tuple[Any, ...]:
    """The ``nuvom_results`` row of a finished job."""
    err = job.error
    return (
        job.id,
        job.func_name,
        job.status.value,
        job.attempts,
        job.worker_id,
        job.created_at,
        job.started_at,
        job.finished_at or time.time(),
        None if err is None else err.type,
        None if err is None else err.message,
        job.to_bytes(),
    )


class SQLiteResultBackend(BaseResultBackend):
    """Finished jobs in a SQLite file, read back by any process.

    ``path`` overrides ``NUVOM_SQLITE_DB_PATH``; ``ttl_secs`` overrides
    ``NUVOM_RESULT_TTL_SECS`` (results older than that are pruned as new ones
    are stored).
    """

    settings_class = SQLiteSettings

    def __init__(
        self, settings: Settings | None = None, *, path: Path | str | None = None, ttl_secs: float | None = None
    ) -> None:
        super().__init__(settings)
        sqlite = load_sqlite_settings()
        if path is None:
            path = resolve_paths(settings, sqlite)[1]
        self.db = Database(path)
        self.ttl_secs = ttl_secs if ttl_secs is not None else sqlite.result_ttl_secs
        # Prune at most every tenth of the retention time, and at least once a minute.
        self._prune_every = None if self.ttl_secs is None else min(60.0, self.ttl_secs / 10)
        self._next_prune = 0.0
        self._prune_lock = threading.Lock()
        # Writes through this object's own connections do not change the
        # connection's data_version; this count does (see counts()).
        self._local_writes = 0
        self._counts: tuple[tuple[int, int, int], dict[str, int]] | None = None
        self._watcher = ResultWatcher(self.db)

    @property
    def path(self) -> Path:
        return self.db.path

    def __repr__(self) -> str:
        return f"<SQLiteResultBackend {self.path}>"

    # -- writing --------------------------------------------------------------
    def store(self, jobs: Sequence[Job]) -> None:
        rows = [result_row(job) for job in jobs]
        with self.db.write("storing results") as conn:
            conn.executemany(INSERT_RESULT, rows)
        self._local_writes += 1
        self.maybe_prune()

    def maybe_prune(self) -> None:
        """Prune if a retention is set and the last prune is old enough."""
        if self._prune_every is None or time.monotonic() < self._next_prune:
            return
        if not self._prune_lock.acquire(blocking=False):
            return
        try:
            self._next_prune = time.monotonic() + self._prune_every
            self.prune()
        except Exception:
            log.exception("pruning old results from %s failed", self.path)
        finally:
            self._prune_lock.release()

    def prune(self, older_than_secs: float | None = None) -> int:
        """Delete results that finished more than ``older_than_secs`` (default:
        the retention) ago; returns how many."""
        age = older_than_secs if older_than_secs is not None else self.ttl_secs
        if age is None:
            return 0
        cutoff = time.time() - age
        total = 0
        while True:
            with self.db.write("pruning results") as conn:
                n = conn.execute(
                    "DELETE FROM nuvom_results WHERE rowid IN "
                    "(SELECT rowid FROM nuvom_results WHERE finished_at < ? LIMIT ?)",
                    (cutoff, _PRUNE_CHUNK),
                ).rowcount
            total += n
            self._local_writes += 1
            if n < _PRUNE_CHUNK:
                return total

    def delete(self, job_id: str) -> bool:
        """Forget one result; ``True`` if there was one."""
        self._local_writes += 1
        with self.db.write("deleting a result") as conn:
            return conn.execute("DELETE FROM nuvom_results WHERE id = ?", (job_id,)).rowcount > 0

    # -- reading --------------------------------------------------------------
    def get_full(self, job_id: str) -> Job | None:
        row = self.db.read(
            lambda c: c.execute("SELECT payload FROM nuvom_results WHERE id = ?", (job_id,)).fetchone(),
            "reading a result",
        )
        return None if row is None else Job.from_bytes(row[0])

    def list_jobs(self, status: JobStatus | str | None = None, limit: int = 100, task: str | None = None) -> list[Job]:
        where: list[str] = []
        params: list[Any] = []
        if status is not None:
            where.append("status = ?")
            params.append(JobStatus(str(getattr(status, "value", status)).upper()).value)
        if task is not None:
            where.append("func_name = ?")
            params.append(task)
        sql = "SELECT payload FROM nuvom_results"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY finished_at DESC LIMIT ?"
        params.append(limit)

        def query(c: sqlite3.Connection) -> list[Any]:
            return c.execute(sql, params).fetchall()

        return [Job.from_bytes(row[0]) for row in self.db.read(query, "listing results")]

    def count(self) -> int:
        return int(self.db.read(lambda c: c.execute("SELECT count(*) FROM nuvom_results").fetchone()[0]))

    def counts(self) -> dict[str, int]:
        # Counting 1M rows walks the status index (tens of ms); a dashboard asks
        # every few seconds, so the answer is kept until the file changes.
        key = (threading.get_ident(), self.db.data_version(), self._local_writes)
        cached = self._counts
        if cached is not None and cached[0] == key:
            return dict(cached[1])

        # Records are terminal, so SUCCESS = all - FAILED. count(*) is SQLite's
        # fast path and FAILED a range of the status index: measured 168 ms for
        # GROUP BY status over 1M rows against a few ms for these two.
        def read(c: sqlite3.Connection) -> tuple[int, int]:
            total = c.execute("SELECT count(*) FROM nuvom_results").fetchone()[0]
            failed = c.execute("SELECT count(*) FROM nuvom_results WHERE status = 'FAILED'").fetchone()[0]
            return int(total), int(failed)

        total, failed = self.db.read(read, "counting results")
        out = {JobStatus.SUCCESS.value: total - failed, JobStatus.FAILED.value: failed}
        self._counts = (key, out)
        return dict(out)

    def query(
        self,
        status: JobStatus | str | None = None,
        task: str | None = None,
        tag: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before: Cursor | None = None,
        limit: int = 50,
    ) -> list[Job]:
        """Keyset pages through the ``finished_at`` indexes. A tag is not a
        column: rows whose payload holds the tag's msgpack bytes are decoded and
        checked (a rare tag reads through many rows; docs/dashboard.md)."""
        where: list[str] = []
        params: list[Any] = []
        if status is not None:
            where.append("status = ?")
            params.append(JobStatus(str(getattr(status, "value", status)).upper()).value)
        if task is not None:
            where.append("func_name = ?")
            params.append(task)
        if since is not None:
            where.append("finished_at >= ?")
            params.append(since)
        if until is not None:
            where.append("finished_at < ?")
            params.append(until)
        if tag is not None:
            where.append("instr(payload, ?) > 0")
            params.append(serialization.dumps(tag, what="a tag"))
        out: list[Job] = []
        cursor = before
        while len(out) < limit:
            page_where = list(where)
            page_params = list(params)
            if cursor is not None:
                # The range on finished_at uses the index; the tie on the same
                # instant is broken by id.
                page_where.append("finished_at <= ? AND NOT (finished_at = ? AND id >= ?)")
                page_params.extend((cursor[0], cursor[0], cursor[1]))
            sql = "SELECT id, finished_at, payload FROM nuvom_results"
            if page_where:
                sql += " WHERE " + " AND ".join(page_where)
            sql += " ORDER BY finished_at DESC, id DESC LIMIT ?"
            want = limit - len(out)
            page_params.append(want)
            rows = self.db.read(_fetch_all(sql, page_params), "listing results")
            for _id, _finished, payload in rows:
                job = Job.from_bytes(payload)
                if tag is None or tag in job.tags:
                    out.append(job)
            if len(rows) < want:
                break
            cursor = (rows[-1][1], rows[-1][0])
        return out

    def wait(self, job_id: str, timeout: float | None = None) -> Job | None:
        """Block until the job has a record: one read if it has one already,
        else wait for this backend's one watcher (:mod:`nuvom.sqlite._watch`),
        which looks only when the file changed and serves every waiting
        ``get()`` of the process with one query."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = self.get_full(job_id)
            if record is not None:
                return record
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            payload = self._watcher.wait_for(job_id, left)
            if payload is not None:
                return Job.from_bytes(payload)
            # Timed out, or the watcher stopped on an error: the next read meets
            # the error (or finds the job); a pause first, so as not to spin.
            pause = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
            if pause > 0:
                time.sleep(pause)

    def close(self) -> None:
        self.db.close()


def _fetch_all(sql: str, params: list[Any]) -> Callable[[sqlite3.Connection], list[Any]]:
    def fetch(conn: sqlite3.Connection) -> list[Any]:
        return conn.execute(sql, params).fetchall()

    return fetch
