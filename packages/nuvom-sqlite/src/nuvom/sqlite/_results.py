"""The result backend: finished jobs in the ``nuvom_results`` table."""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nuvom.job import Job, JobStatus
from nuvom.plugins.contracts import BaseResultBackend, Cursor
from nuvom.sqlite._control import chunks, qmarks
from nuvom.sqlite._db import Database
from nuvom.sqlite._schema import tags_column
from nuvom.sqlite._settings import SQLiteSettings, load_sqlite_settings, resolve_paths
from nuvom.sqlite._watch import ResultWatcher

if TYPE_CHECKING:
    from nuvom.config import Settings

__all__ = ["SQLiteResultBackend", "insert_results"]

log = logging.getLogger("nuvom.sqlite")

INSERT_RESULT = (
    "INSERT OR REPLACE INTO nuvom_results (id, func_name, status, attempts, worker_id, created_at, "
    "started_at, finished_at, error_type, error_message, payload, tags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

_ROWS_PER_INSERT = 16
_ONE_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


@functools.lru_cache(maxsize=_ROWS_PER_INSERT)
def _insert_results(n: int) -> str:
    return INSERT_RESULT.replace(_ONE_ROW, ",".join([_ONE_ROW] * n))


INSERT_TAG = "INSERT OR IGNORE INTO nuvom_job_tags (tag, finished_at, job_id, status, func_name) VALUES (?, ?, ?, ?, ?)"

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
        tags_column(job.tags) if job.tags else None,
    )


def insert_results(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Store ``result_row`` rows and index their tags, in the caller's
    transaction. Every path that stores results goes through here (the
    queue's ``complete()`` too), so the tag index never lags the results.

    Rows without tags cost one look at their last column: no statement, no
    trigger. A tagged job stored again (the same id: a completion recorded
    twice) first loses the tag rows of its previous record, whose
    ``finished_at`` may differ; the delete trigger does not fire for rows
    that INSERT OR REPLACE replaces."""
    tagged = [row for row in rows if row[11] is not None]
    if tagged:
        _unindex_previous(conn, [row[0] for row in tagged])
    # Up to _ROWS_PER_INSERT rows a statement: one step, where executemany()
    # takes a step a row, and each step lets go of the GIL (see
    # nuvom.sqlite._settling.write_marks). At most that many texts to prepare.
    for first in range(0, len(rows), _ROWS_PER_INSERT):
        part = rows[first : first + _ROWS_PER_INSERT]
        conn.execute(_insert_results(len(part)), [value for row in part for value in row])
    if tagged:
        conn.executemany(
            INSERT_TAG, [(tag, row[7], row[0], row[2], row[1]) for row in tagged for tag in _tag_list(row[11])]
        )


def _unindex_previous(conn: sqlite3.Connection, ids: list[str]) -> None:
    for first in range(0, len(ids), 500):  # well under SQLite's bound-variable limit
        chunk = ids[first : first + 500]
        conn.execute(
            "DELETE FROM nuvom_job_tags WHERE (tag, finished_at, job_id) IN (SELECT j.value, r.finished_at, r.id "
            f"FROM nuvom_results AS r, json_each(r.tags) AS j WHERE r.id IN ({','.join('?' * len(chunk))}) "
            "AND r.tags IS NOT NULL)",
            chunk,
        )


_parsed_tags: dict[str, list[str]] = {}


def _tag_list(column: str) -> list[str]:
    # Jobs mostly share a few tag lists: parse each once (bounded).
    tags = _parsed_tags.get(column)
    if tags is None:
        tags = json.loads(column)
        if len(_parsed_tags) < 1000:
            _parsed_tags[column] = tags
    return tags


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
            insert_results(conn, rows)
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

    def get_many(self, job_ids: Sequence[str]) -> dict[str, Job]:
        """One read for all of them (``job.get()`` reads ahead with it)."""

        def read(conn: sqlite3.Connection) -> list[Any]:
            rows: list[Any] = []
            for chunk in chunks(job_ids):
                sql = f"SELECT id, payload FROM nuvom_results WHERE id IN ({qmarks(len(chunk))})"
                rows += conn.execute(sql, tuple(chunk)).fetchall()
            return rows

        return {job_id: Job.from_bytes(payload) for job_id, payload in self.db.read(read, "reading results")}

    def list_jobs(self, status: JobStatus | str | None = None, limit: int = 100, task: str | None = None) -> list[Job]:
        where: list[str] = []
        params: list[Any] = []
        if status is not None:
            where.append("status = ?")
            params.append(_status_value(status))
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
        """Keyset pages through the ``finished_at`` indexes; by tag, through the
        tag index ``nuvom_job_tags (tag, finished_at, job_id)``, so a page costs
        about what the first page costs however rare the tag (docs/sqlite.md)."""
        if tag is not None:
            return self._query_tag(status, task, tag, since, until, before, limit)
        where: list[str] = []
        params: list[Any] = []
        _add_filters(where, params, "", status, task, since, until)
        if before is not None:
            # The range on finished_at uses the index; the tie on the same
            # instant is broken by id.
            where.append("finished_at <= ? AND NOT (finished_at = ? AND id >= ?)")
            params.extend((before[0], before[0], before[1]))
        sql = "SELECT payload FROM nuvom_results"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY finished_at DESC, id DESC LIMIT ?"
        params.append(limit)
        rows = self.db.read(_fetch_all(sql, params), "listing results")
        return [Job.from_bytes(row[0]) for row in rows]

    def _query_tag(
        self,
        status: JobStatus | str | None,
        task: str | None,
        tag: str,
        since: float | None,
        until: float | None,
        before: Cursor | None,
        limit: int,
    ) -> list[Job]:
        # The tag table drives (CROSS JOIN fixes the order): its primary key is
        # the page order, status and task are checked on its rows, and only the
        # rows of the page are looked up in nuvom_results by id. The join also
        # asks for the same finished_at and status: a tag row left stale by a
        # writer that bypassed the triggers' conditions can never show a job
        # at the wrong place or under the wrong status.
        where = ["t.tag = ?", "r.id = t.job_id", "r.finished_at = t.finished_at"]
        params: list[Any] = [tag]
        _add_filters(where, params, "t.", status, task, since, until)
        if status is not None:
            where.append("r.status = t.status")
        if task is not None:
            where.append("r.func_name = t.func_name")
        if before is not None:
            where.append("(t.finished_at, t.job_id) < (?, ?)")
            params.extend((before[0], before[1]))
        sql = (
            "SELECT r.payload FROM nuvom_job_tags AS t CROSS JOIN nuvom_results AS r WHERE "
            + " AND ".join(where)
            + " ORDER BY t.finished_at DESC, t.job_id DESC LIMIT ?"
        )
        params.append(limit)
        rows = self.db.read(_fetch_all(sql, params), "listing results by tag")
        return [Job.from_bytes(row[0]) for row in rows]

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


def _status_value(status: JobStatus | str) -> str:
    return JobStatus(str(getattr(status, "value", status)).upper()).value


def _fetch_all(sql: str, params: list[Any]) -> Callable[[sqlite3.Connection], list[Any]]:
    def fetch(conn: sqlite3.Connection) -> list[Any]:
        return conn.execute(sql, params).fetchall()

    return fetch


def _add_filters(
    where: list[str],
    params: list[Any],
    table: str,
    status: JobStatus | str | None,
    task: str | None,
    since: float | None,
    until: float | None,
) -> None:
    """The filters both listings share, on the columns of ``table`` (a prefix
    such as ``"t."``, or ``""``): status, task and the finished_at range."""
    if status is not None:
        where.append(f"{table}status = ?")
        params.append(_status_value(status))
    if task is not None:
        where.append(f"{table}func_name = ?")
        params.append(task)
    if since is not None:
        where.append(f"{table}finished_at >= ?")
        params.append(since)
    if until is not None:
        where.append(f"{table}finished_at < ?")
        params.append(until)
