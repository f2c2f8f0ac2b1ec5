"""The result backend: finished jobs in ``nuvom_results``, their tags in
``nuvom_job_tags``; every listing is a keyset walk of one index."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from nuvom.job import Job, JobStatus
from nuvom.plugins.contracts import BaseResultBackend, Cursor
from nuvom.postgres._db import Database, acquire, release
from nuvom.postgres._listen import ResultWatcher
from nuvom.postgres._settings import PostgresSettings, load_postgres_settings
from nuvom.postgres._sql import NOW, byteas, floats, ints, text_array, texts

if TYPE_CHECKING:
    from nuvom.config import Settings

__all__ = ["PostgresResultBackend", "result_arrays"]

log = logging.getLogger("nuvom.postgres")

# Pruning deletes at most this many rows per statement, so that a first prune
# of a large table never holds its locks (and its WAL) for long.
_PRUNE_CHUNK = 5000
# Waiter rows of processes that died waiting are deleted after this long.
_WAITER_KEEP_SECS = 86400.0


def result_arrays(jobs: Sequence[Job], tokens: Sequence[int | None]) -> dict[str, str]:
    """The parameters of a store (``Statements.settle``): one array literal per
    column, from one pass over the jobs (a group write's Python is mostly this)."""
    now = time.time()
    rows = [
        (
            job.id,
            job.attempts,
            job.func_name,
            job.status.value,
            job.worker_id,
            job.created_at,
            job.started_at,
            job.finished_at or now,
            None if job.error is None else job.error.type,
            None if job.error is None else job.error.message,
            text_array(list(dict.fromkeys(job.tags))) if job.tags else None,
            job.to_bytes(),
        )
        for job in jobs
    ]
    ids, attempts, funcs, statuses, workers, created, started, finished, etypes, emessages, tags, payloads = (
        zip(*rows, strict=True) if rows else ((),) * 12
    )
    return {
        "id": texts(ids),
        "token": ints(tokens),
        "attempts": ints(attempts),
        "func_name": texts(funcs),
        "status": texts(statuses),
        "worker_id": texts(workers),
        "created_at": floats(created),
        "started_at": floats(started),
        "finished_at": floats(finished),
        "error_type": texts(etypes),
        "error_message": texts(emessages),
        "tags": texts(tags),
        "payload": byteas(payloads),
    }


def _status(status: JobStatus | str) -> str:
    return JobStatus(str(getattr(status, "value", status)).upper()).value


class PostgresResultBackend(BaseResultBackend):
    """Finished jobs in PostgreSQL, read back by any process on any host.

    ``postgres`` overrides the ``NUVOM_POSTGRES_*`` settings (tests, embedding);
    ``ttl_secs`` overrides ``NUVOM_RESULT_TTL_SECS`` (results older than that
    are pruned as new ones are stored).
    """

    settings_class = PostgresSettings

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        postgres: PostgresSettings | None = None,
        ttl_secs: float | None = None,
    ) -> None:
        super().__init__(settings)
        self.postgres_settings = postgres or load_postgres_settings()
        self.db: Database = acquire(self.postgres_settings)
        self.sql = self.db.sql
        self.ttl_secs = ttl_secs if ttl_secs is not None else self.postgres_settings.result_ttl_secs
        # Prune at most every tenth of the retention time, and at least once a minute.
        self._prune_every = None if self.ttl_secs is None else min(60.0, self.ttl_secs / 10)
        self._next_prune = 0.0
        self._prune_lock = threading.Lock()
        self._watcher: ResultWatcher | None = None
        self._watcher_lock = threading.Lock()
        r, w = self.sql.results, self.sql.waiters
        self._register = (
            f"WITH r AS (SELECT payload FROM {r} WHERE id = %(id)s), "
            f"w AS (INSERT INTO {w} (job_id, waiter, since) SELECT %(id)s, %(waiter)s, {NOW} "
            "WHERE NOT EXISTS (SELECT 1 FROM r) ON CONFLICT DO NOTHING) SELECT payload FROM r"
        )
        self._closed = False

    def __repr__(self) -> str:
        return f"<PostgresResultBackend {self.db.safe_url} schema={self.db.schema}>"

    def _read(self, what: str, statement: str, params: Any = ()) -> list[Any]:
        return self.db.run(what, lambda conn: conn.execute(statement, params, prepare=False).fetchall())

    def _read_planned(self, what: str, statement: str, params: Any = ()) -> list[Any]:
        """:meth:`_read` planned for its values: they are bound here, in the
        statement's text. Sent apart, they were planned generically (the pool's
        connections force generic plans, which the queue's statements want), and
        a generic plan of a history page guessed neither the tag nor the page
        size: it sorted every row of the tag (269 ms for the first page by tag at
        1,000,000 results), where the tag's index gives the page in its order."""

        def run(conn: psycopg.Connection[Any]) -> list[Any]:
            with psycopg.ClientCursor(conn) as cursor:
                return cursor.execute(statement, params).fetchall()

        return self.db.run(what, run)

    # -- writing --------------------------------------------------------------
    def store(self, jobs: Sequence[Job]) -> None:
        """Store records in one statement, replacing those with the same ids."""
        if not jobs:
            return
        params = result_arrays(jobs, [None] * len(jobs))
        statement = self.sql.settle("", "plain", False, False, False)
        self.db.run(
            "storing results",
            lambda conn: conn.execute(statement, params, prepare=True).fetchall(),
            patience=self.postgres_settings.postgres_worker_retry_secs,
        )
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
            log.exception("pruning old results from schema %s failed", self.db.schema)
        finally:
            self._prune_lock.release()

    def prune(self, older_than_secs: float | None = None) -> int:
        """Delete results that finished more than ``older_than_secs`` (default:
        the retention) ago, with their tag rows; returns how many."""
        age = older_than_secs if older_than_secs is not None else self.ttl_secs
        if age is None:
            return 0
        cutoff = time.time() - age
        r, w = self.sql.results, self.sql.waiters
        statement = f"DELETE FROM {r} WHERE id IN (SELECT id FROM {r} WHERE finished_at < %s LIMIT {_PRUNE_CHUNK})"
        total = 0
        while True:
            n = self.db.run("pruning results", lambda conn: conn.execute(statement, (cutoff,)).rowcount)
            total += n
            if n < _PRUNE_CHUNK:
                break
        self.db.run(
            "pruning result waiters",
            lambda conn: conn.execute(f"DELETE FROM {w} WHERE since < %s", (time.time() - _WAITER_KEEP_SECS,)),
        )
        return total

    def delete(self, job_id: str) -> bool:
        """Forget one result; ``True`` if there was one."""
        statement = f"DELETE FROM {self.sql.results} WHERE id = %s"
        return bool(self.db.run("deleting a result", lambda conn: conn.execute(statement, (job_id,)).rowcount))

    # -- reading --------------------------------------------------------------
    def get_full(self, job_id: str) -> Job | None:
        rows = self._read("reading a result", f"SELECT payload FROM {self.sql.results} WHERE id = %s", (job_id,))
        return Job.from_bytes(bytes(rows[0][0])) if rows else None

    def get_many(self, job_ids: Sequence[str]) -> dict[str, Job]:
        """One statement for all of them (``job.get()`` reads ahead with it)."""
        if not job_ids:
            return {}
        statement = f"SELECT id, payload FROM {self.sql.results} WHERE id = ANY(%s)"
        rows = self._read("reading results", statement, (list(job_ids),))
        return {job_id: Job.from_bytes(bytes(payload)) for job_id, payload in rows}

    def list_jobs(self, status: JobStatus | str | None = None, limit: int = 100, task: str | None = None) -> list[Job]:
        return self.query(status=status, task=task, limit=limit)

    def count(self) -> int:
        return int(self._read("counting results", f"SELECT count(*) FROM {self.sql.results}")[0][0])

    def counts(self) -> dict[str, int]:
        # Records are terminal, so SUCCESS = all - FAILED: two counts that read
        # indexes only, where GROUP BY status read the whole table.
        r = self.sql.results
        [(total, failed)] = self._read(
            "counting results",
            f"SELECT (SELECT count(*) FROM {r}), (SELECT count(*) FROM {r} WHERE status = 'FAILED')",
        )
        return {JobStatus.SUCCESS.value: int(total) - int(failed), JobStatus.FAILED.value: int(failed)}

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
        """Keyset pages through the ``(…, finished_at, id)`` indexes; by tag,
        through ``nuvom_job_tags (tag, finished_at, job_id)``, so a page costs
        about what the first page costs however deep and however rare the tag."""
        if limit <= 0:
            return []
        where: list[str] = []
        params: list[Any] = []
        if tag is not None:
            # The tag rows drive: their primary key is the page order, and status
            # and task are checked on them; only the page's rows are read from
            # nuvom_results, by id.
            where.append("t.tag = %s")
            params.append(tag)
            alias, key = "t.", "t.finished_at, t.job_id"
        else:
            alias, key = "r.", "r.finished_at, r.id"
        if status is not None:
            where.append(f"{alias}status = %s")
            params.append(_status(status))
        if task is not None:
            where.append(f"{alias}func_name = %s")
            params.append(task)
        if since is not None:
            where.append(f"{alias}finished_at >= %s")
            params.append(since)
        if until is not None:
            where.append(f"{alias}finished_at < %s")
            params.append(until)
        if before is not None:
            where.append(f"({key}) < (%s, %s)")
            params.extend((before[0], before[1]))
        order = ", ".join(f"{column} DESC" for column in key.split(", "))
        condition = (" WHERE " + " AND ".join(where)) if where else ""
        if tag is not None:
            # Each row of the page read by its id (a subquery per row: a join was
            # planned as a hash of the page against the whole table at 1M rows).
            statement = (
                f"SELECT (SELECT r.payload FROM {self.sql.results} AS r WHERE r.id = t.job_id) FROM "
                f"(SELECT t.job_id, t.finished_at FROM {self.sql.tags} AS t{condition} ORDER BY {order} LIMIT %s) "
                f"AS t ORDER BY {order}"
            )
        else:
            statement = f"SELECT r.payload FROM {self.sql.results} AS r{condition} ORDER BY {order} LIMIT %s"
        params.append(limit)
        rows = self._read_planned("listing results", statement, params)
        return [Job.from_bytes(bytes(row[0])) for row in rows if row[0] is not None]

    # -- waiting --------------------------------------------------------------
    def _watching(self) -> ResultWatcher:
        with self._watcher_lock:
            if self._watcher is None:
                self._watcher = ResultWatcher(self.db, self.postgres_settings.postgres_poll_secs)
            return self._watcher

    def _start_waiting(self, job_id: str) -> tuple[ResultWatcher | None, Any, Job | None]:
        """``(watcher, lock, record)``: the record alone (no watcher, no lock) if
        it is stored already, read by one plain statement; else a waiter
        registered for ``job_id`` (here and in the server) and its record read
        in the same statement, found if it was stored in between.

        A finished job's ``get()`` is the common case (a loop of ``get()`` after
        ``.delay()``s, the CLI, the dashboard): registering first cost it a
        second statement to forget the waiter, and woke the watcher."""
        record = self.get_full(job_id)
        if record is not None:
            return None, None, record
        watcher = self._watching()
        held = watcher.register(job_id)
        try:
            watcher.ensure()
        except Exception as exc:  # not reachable now: the read below says why, or waits
            log.debug("listening for results: %s", exc)
        params = {"id": job_id, "waiter": watcher.waiter}
        rows = self._read("waiting for a result", self._register, params)
        return watcher, held, Job.from_bytes(bytes(rows[0][0])) if rows else None

    def _stop_waiting(self, watcher: ResultWatcher | None, job_id: str, held: Any, registered: bool) -> bytes | None:
        """Stop awaiting ``job_id``; the payload the watcher found, if any.
        ``registered``: the server holds a waiter row to forget (the record was
        not there when the waiter was registered)."""
        if watcher is None:
            return None
        payload = watcher.take(job_id, held)
        if registered and payload is None and not watcher.awaits(job_id):
            statement = f"DELETE FROM {self.sql.waiters} WHERE job_id = %s AND waiter = %s"
            try:
                self.db.run("waiting for a result", lambda conn: conn.execute(statement, (job_id, watcher.waiter)))
            except Exception as exc:  # left for the prune: it only ever costs a notification
                log.debug("forgetting a waiter of job %s: %s", job_id, exc)
        return payload

    def wait(self, job_id: str, timeout: float | None = None) -> Job | None:
        """Block until the job has a record: one statement if it has one already,
        else a NOTIFY from the statement that stores it, received by this
        backend's watcher thread, which serves every waiting ``get()`` of the
        process (:mod:`nuvom.postgres._listen`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        watcher, held, record = self._start_waiting(job_id)
        registered = record is None
        payload = None
        try:
            while record is None:
                assert watcher is not None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                if held.acquire(timeout=1.0 if left is None else min(1.0, left)):
                    break
                if not watcher.ensure():  # no notifications for now: look ourselves
                    record = self.get_full(job_id)
        finally:
            payload = self._stop_waiting(watcher, job_id, held, registered)
        if record is not None:
            return record
        return None if payload is None else Job.from_bytes(payload)

    async def wait_async(self, job_id: str, timeout: float | None = None) -> Job | None:
        """:meth:`wait` for ``async`` callers: the watcher hands the record over,
        and the coroutine looks at its lock between short sleeps, holding no thread."""
        deadline = None if timeout is None else time.monotonic() + timeout
        watcher, held, record = await asyncio.to_thread(self._start_waiting, job_id)
        registered = record is None
        payload = None
        interval = 0.001
        try:
            while record is None and held is not None and not held.acquire(blocking=False):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                await asyncio.sleep(interval if left is None else min(interval, left))
                interval = min(interval * 2, 0.05)
        finally:
            if watcher is not None:  # else found by the first read: nothing to forget
                payload = await asyncio.to_thread(self._stop_waiting, watcher, job_id, held, registered)
        if record is not None:
            return record
        return None if payload is None else Job.from_bytes(payload)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._watcher is not None:
                self._watcher.stop()
            release(self.db)
