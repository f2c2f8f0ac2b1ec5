"""Queueing jobs with unique keys or parents (workflows): one statement for a
batch, :class:`~nuvom.postgres.PostgresJobQueue`'s methods beyond a plain enqueue."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from nuvom.errors import BackendError
from nuvom.job import Job
from nuvom.postgres._rows import enqueue_arrays
from nuvom.postgres._sql import texts
from nuvom.postgres._transaction import execute_in

if TYPE_CHECKING:
    from nuvom.postgres._db import Database
    from nuvom.postgres._sql import Statements

__all__ = ["QueueControl"]

# A unique key's holder can leave the queue between our insert's conflict and
# its read (then none is found): the statement is run again, this many times.
_UNIQUE_TRIES = 20


class QueueControl:
    """Mixed into :class:`~nuvom.postgres.PostgresJobQueue` (needs its ``db`` and ``sql``)."""

    db: Database
    sql: Statements

    def enqueue_unique(self, job: Job) -> str:
        """Insert ``job`` unless a job in the queue holds its key (a unique
        partial index on ``unique_key``: of producers racing for a key, the
        server lets one insert), else return the holder's id."""
        for _ in range(_UNIQUE_TRIES):
            holder = self._enqueue_control([job], "queueing a unique job")[0]
            if holder is not None:
                return holder
        raise BackendError(
            f"PostgreSQL at {self.db.safe_url}: the unique key {job.unique_key!r} of job {job.id} kept changing "
            f"holders over {_UNIQUE_TRIES} tries; queue it again"
        )

    def _enqueue_control(self, jobs: Sequence[Job], what: str) -> list[str | None]:
        """Queue ``jobs`` in one statement: each job's parents still in the queue
        are recorded (and the job waits for them), a job whose unique key is held
        is not queued. For each job: its own id if queued, the holder's id if its
        key was held, ``None`` if the holder left meanwhile (try again). A parent
        queued in this same batch does not count: queue parents first."""
        params = enqueue_arrays(jobs)
        edges = [(job.id, parent) for job in jobs if job.flow is not None for parent in job.flow.parents]
        params["e_child"] = texts([child for child, _ in edges])
        params["e_parent"] = texts([parent for _, parent in edges])
        params["unique_key"] = texts([job.unique_key for job in jobs])
        out: dict[str, str | None] = {}
        tries = 0

        def run(conn: psycopg.Connection[Any]) -> None:
            nonlocal tries
            tries += 1
            params["sent"] = time.time()
            try:
                rows = conn.execute(self.sql.enqueue_control, params, prepare=True).fetchall()
            except psycopg.errors.UniqueViolation:
                if tries == 1:
                    raise BackendError(
                        f"PostgreSQL at {self.db.safe_url}: a job with one of these ids is already queued in "
                        f"schema {self.db.schema}; job ids must be unique"
                    ) from None
                # A retry after a lost reply finds its own jobs queued: that is success.
                out.update((job.id, job.id) for job in jobs)
                return
            out.update((job_id, holder) for job_id, holder in rows if job_id is not None)

        self.db.run(what, run)
        return [out.get(job.id) for job in jobs]

    def enqueue_in(self, connection: Any, jobs: Sequence[Job]) -> None:
        """Queue ``jobs`` through the caller's own open connection (psycopg,
        psycopg2, a SQLAlchemy ``Connection`` or ``Session``, Django's
        ``connection``), in its transaction: they exist if and only if it
        commits, and the NOTIFY that wakes workers is sent at that commit."""
        if not jobs:
            return
        self.db.run("checking the schema", lambda conn: None)  # created by nuvom's connection, not the caller's
        try:
            params = enqueue_arrays(jobs)
            params["sent"] = time.time()
            execute_in(connection, self.sql.enqueue, params)
        except BackendError:
            raise
        except Exception as exc:
            name = type(exc).__name__
            if "UndefinedTable" in name or "does not exist" in str(exc):
                raise BackendError(
                    f"queueing in your transaction: {exc}; the connection must be to the database of "
                    f"NUVOM_POSTGRES_URL ({self.db.safe_url}), where schema {self.db.schema} holds nuvom's tables"
                ) from exc
            raise
