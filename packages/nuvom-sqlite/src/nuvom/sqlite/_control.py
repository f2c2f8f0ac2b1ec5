"""Job control of the SQLite queue (:class:`nuvom.sqlite.SQLiteJobQueue`):
unique keys, workflow jobs waiting for their parents, cancel requests for
running jobs, rate limits, and the counts by named queue. Added by schema
migration 6.

Each is kept in ``nuvom_queue``'s own rows where it can be, so that it goes
away with the row: a unique key (``unique_key``, under a partial UNIQUE index)
and a cancel request (``cancel_at``) are dropped by the statement that
removes the job. A workflow job waits in state 2, with one ``nuvom_deps`` row
per parent still in the queue; its parents are flagged (``awaited``), and a
flagged row that leaves the queue releases, in the same transaction, every
job it was the last parent of (:func:`release`). Rate limits are one number
per key in ``nuvom_rates``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nuvom.errors import BackendError, SerializationError
from nuvom.job import DEFAULT_QUEUE, Job, JobStatus

if TYPE_CHECKING:
    import sqlite3

    from nuvom.sqlite._db import Database

log = logging.getLogger("nuvom.sqlite")

__all__ = ["INSERT_QUEUED", "SQLiteJobControl", "chunks", "duplicate", "insert_jobs", "qmarks", "queue_row", "release"]

# Host parameters per statement stay well under SQLite's limit (32766).
_CHUNK = 500

# A queued job, due at once or at its not-before time: ``.delay()``, ``.map()``
# and schedule ticks, with the values of :func:`queue_row`.
INSERT_QUEUED = (
    "INSERT INTO nuvom_queue (id, func_name, state, ready_at, attempts, timeout_secs, created_at, payload, queue, "
    "priority) VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?, ?)"
)
# Every column a job is queued with: a job holding a unique key or waiting for its parents.
_INSERT = (
    "INSERT INTO nuvom_queue (id, func_name, ready_at, attempts, timeout_secs, created_at, payload, queue, "
    "priority, unique_key, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def chunks(items: Sequence[Any], size: int = _CHUNK) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def qmarks(n: int) -> str:
    return ",".join("?" * n)


def queue_row(job: Job) -> tuple[Any, ...]:
    """The values of :data:`INSERT_QUEUED`."""
    return (
        job.id,
        job.func_name,
        job.due_at,
        job.attempts,
        job.timeout_secs,
        job.created_at,
        job.to_bytes(),
        job.queue,
        job.priority,
    )


def duplicate(exc: BackendError, path: Path) -> BackendError:
    """The error of a failed insert: a clearer one for a duplicate id."""
    if "UNIQUE constraint failed: nuvom_queue.id" in str(exc):
        return BackendError(f"{path}: a job with one of these ids is already queued; job ids must be unique")
    return exc


def insert_jobs(conn: sqlite3.Connection, jobs: Sequence[Job]) -> None:
    """Queue ``jobs`` in the caller's transaction, in order (a parent queued
    in the same call comes first). A workflow job of which a parent is still
    in the queue is stored waiting (state 2) with an edge to each such parent,
    and those parents are flagged; otherwise it is due at once, ``PENDING``."""
    for job in jobs:
        state = 0
        flow = job.flow
        if flow is not None:
            # Only parents still in the queue count: one that finished (or was
            # cancelled) already has its record, whatever it says.
            present: list[str] = []
            for chunk in chunks(flow.parents):
                cur = conn.execute(
                    f"UPDATE nuvom_queue SET awaited = 1 WHERE id IN ({qmarks(len(chunk))}) RETURNING id", chunk
                )
                present.extend(row[0] for row in cur.fetchall())
            if present:
                state = 2
                conn.executemany(
                    "INSERT OR IGNORE INTO nuvom_deps (parent, child) VALUES (?, ?)",
                    [(parent, job.id) for parent in present],
                )
            job.set_fields(status=JobStatus.WAITING if present else JobStatus.PENDING)
        conn.execute(_INSERT, (*queue_row(job), job.unique_key, state))


def release(conn: sqlite3.Connection, parents: Sequence[str]) -> int:
    """``parents`` (flagged ``awaited``) have left the queue, in the caller's
    transaction: drop their edges and make due every waiting job with no
    parent left in the queue. Returns how many were released."""
    children: set[str] = set()
    for chunk in chunks(parents):
        cur = conn.execute(f"DELETE FROM nuvom_deps WHERE parent IN ({qmarks(len(chunk))}) RETURNING child", chunk)
        children.update(row[0] for row in cur.fetchall())
    released = 0
    for chunk in chunks(sorted(children)):
        released += conn.execute(
            f"UPDATE nuvom_queue SET state = 0 WHERE id IN ({qmarks(len(chunk))}) AND state = 2 "
            "AND NOT EXISTS (SELECT 1 FROM nuvom_deps WHERE child = nuvom_queue.id)",
            chunk,
        ).rowcount
    return released


class SQLiteJobControl:
    """Mixed into :class:`~nuvom.sqlite.SQLiteJobQueue` ahead of
    :class:`~nuvom.plugins.contracts.BaseJobQueue` (needs its ``db``)."""

    db: Database
    _local_writes: int

    # -- reading and steering ---------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        row = self.db.read(
            lambda c: c.execute("SELECT state, attempts, payload FROM nuvom_queue WHERE id = ?", (job_id,)).fetchone()
        )
        if row is None:
            return None
        return _as_queued(row[0], row[1], row[2])

    def qsize(self) -> int:
        return int(self.db.read(lambda c: c.execute("SELECT count(*) FROM nuvom_queue WHERE state != 1").fetchone()[0]))

    def claims_held(self) -> tuple[int, float | None]:
        n, last = self.db.read(
            lambda c: c.execute("SELECT count(*), max(ready_at) FROM nuvom_queue WHERE state = 1").fetchone(),
            "counting claimed jobs",
        )
        return int(n), last

    def running(self) -> int:
        """Number of claimed jobs (running somewhere, or held by a dead worker until its lease ends)."""
        return int(self.db.read(lambda c: c.execute("SELECT count(*) FROM nuvom_queue WHERE state = 1").fetchone()[0]))

    def counts(self) -> dict[str, int]:
        """A job waiting for its parents counts as ``queued``."""
        rows = self.db.read(
            lambda c: c.execute("SELECT state = 1, attempts > 0, count(*) FROM nuvom_queue GROUP BY 1, 2").fetchall(),
            "counting queued jobs",
        )
        out = {"queued": 0, "retrying": 0, "running": 0}
        for claimed, ran_before, n in rows:
            out["running" if claimed else ("retrying" if ran_before else "queued")] += int(n)
        return out

    def queue_counts(self) -> dict[str, dict[str, int]]:
        rows = self.db.read(
            lambda c: c.execute(
                "SELECT queue, state = 1, attempts > 0, count(*) FROM nuvom_queue GROUP BY 1, 2, 3"
            ).fetchall(),
            "counting queued jobs",
        )
        out: dict[str, dict[str, int]] = {DEFAULT_QUEUE: {"queued": 0, "retrying": 0, "running": 0}}
        for name, claimed, ran_before, n in rows:
            counts = out.setdefault(str(name), {"queued": 0, "retrying": 0, "running": 0})
            counts["running" if claimed else ("retrying" if ran_before else "queued")] += int(n)
        return dict(sorted(out.items()))

    def peek(self, limit: int = 50) -> list[Job]:
        """Unclaimed jobs queue by queue (by name), each in claim order (higher
        priority first, then due time; the ones not yet due last of their
        priority): the claim index read in order. Jobs waiting for their parents are not shown."""
        rows = self.db.read(
            lambda c: c.execute(
                "SELECT attempts, payload FROM nuvom_queue WHERE state < 2 AND state = 0 "
                "ORDER BY queue, priority DESC, ready_at, seq LIMIT ?",
                (limit,),
            ).fetchall(),
            "reading queued jobs",
        )
        out: list[Job] = []
        for attempts, payload in rows:
            try:
                out.append(_as_queued(0, attempts, payload))
            except SerializationError:
                continue  # the claimer records it as failed
        return out

    def dependents(self, job_id: str) -> list[str]:
        rows = self.db.read(
            lambda c: c.execute("SELECT child FROM nuvom_deps WHERE parent = ? ORDER BY child", (job_id,)).fetchall(),
            "reading a job's dependents",
        )
        return [row[0] for row in rows]

    def cancel(self, job_id: str) -> Job | None:
        """Remove a job not claimed (queued, or waiting for its parents) and
        release, in the same transaction, the jobs that waited only for it."""
        with self.db.write("cancelling a job") as conn:
            row = conn.execute(
                "DELETE FROM nuvom_queue WHERE id = ? AND state != 1 RETURNING attempts, payload, state, awaited",
                (job_id,),
            ).fetchone()
            if row is not None:
                if row[2] == 2:
                    conn.execute("DELETE FROM nuvom_deps WHERE child = ?", (job_id,))
                if row[3]:
                    release(conn, [job_id])
        if row is None:
            return None
        self._local_writes += 1
        try:
            return _as_queued(0, row[0], row[1])
        except SerializationError as exc:
            log.warning("cancelled job %s had an unreadable payload: %s", job_id, exc)
            return Job(id=job_id, func_name="?", attempts=row[0])

    def clear(self) -> int:
        """Drop every job not claimed, those waiting for their parents too (and
        so every edge: only a waiting job has edges)."""
        with self.db.write("clearing the queue") as conn:
            n = int(conn.execute("DELETE FROM nuvom_queue WHERE state != 1").rowcount)
            conn.execute("DELETE FROM nuvom_deps")
        return n

    # -- job control ------------------------------------------------------------
    def enqueue_unique(self, job: Job) -> str:
        """One transaction: the holder of the key if a job in the queue has it,
        else ``job`` queued. The write lock is held from the look to the
        insert, and the partial UNIQUE index on ``unique_key`` refuses a second
        holder whatever writes the row."""
        key = job.unique_key
        if key is None:
            raise ValueError(f"job {job.id} has no unique_key")
        try:
            with self.db.write("queueing a unique job") as conn:
                row = conn.execute("SELECT id FROM nuvom_queue WHERE unique_key = ?", (key,)).fetchone()
                if row is not None:
                    return str(row[0])
                insert_jobs(conn, [job])
        except BackendError as exc:
            raise duplicate(exc, self.db.path) from None
        self._local_writes += 1
        return job.id

    def request_cancel(self, job_id: str) -> bool:
        with self.db.write("asking a running job to cancel") as conn:
            cur = conn.execute(
                "UPDATE nuvom_queue SET cancel_at = coalesce(cancel_at, ?) WHERE id = ? AND state = 1",
                (time.time(), job_id),
            )
            return cur.rowcount > 0

    def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        # The partial index holds only the rows asked to cancel: usually none.
        rows = self.db.read(
            lambda c: c.execute("SELECT id FROM nuvom_queue WHERE cancel_at IS NOT NULL").fetchall(),
            "reading cancel requests",
        )
        return {row[0] for row in rows}.intersection(job_ids) if rows else set()

    def acquire_rate(self, key: str, limit: int, per_secs: float) -> float:
        """GCRA on ``nuvom_rates``, read and written in one transaction under
        the write lock, with this process's clock (as the leases are)."""
        interval = per_secs / limit

        def take(conn: sqlite3.Connection) -> float:
            now = time.time()
            row = conn.execute("SELECT tat FROM nuvom_rates WHERE key = ?", (key,)).fetchone()
            tat = max(now if row is None else float(row[0]), now) + interval
            wait = tat - now - per_secs
            if wait > 0:
                return wait
            conn.execute(
                "INSERT INTO nuvom_rates (key, tat) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET tat = excluded.tat",
                (key, tat),
            )
            return 0.0

        return self.db.combined(take, "taking a start of a rate limit")


def _as_queued(state: int, attempts: int, payload: bytes) -> Job:
    """The job of a queue row as a reader sees it: ``RUNNING`` when claimed,
    ``WAITING`` while it waits for its parents, ``PENDING`` once released
    (its payload still says ``WAITING``)."""
    job = Job.from_bytes(payload)
    job.attempts = attempts
    if state == 1:
        job.status = JobStatus.RUNNING
    elif state == 2:
        job.status = JobStatus.WAITING
    elif job.status is JobStatus.WAITING:
        job.status = JobStatus.PENDING
    return job
