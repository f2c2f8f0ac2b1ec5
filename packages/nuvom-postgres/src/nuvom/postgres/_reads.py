"""Reading and steering the PostgreSQL queue (dashboards, the CLI, the SDK):
:class:`~nuvom.postgres.PostgresJobQueue`'s methods that claim nothing."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nuvom.errors import SerializationError
from nuvom.job import Job, JobStatus

if TYPE_CHECKING:
    from nuvom.postgres._db import Database
    from nuvom.postgres._sql import Statements

__all__ = ["QueueReads"]

log = logging.getLogger("nuvom.postgres")


class QueueReads:
    """Mixed into :class:`~nuvom.postgres.PostgresJobQueue` (needs its ``db`` and ``sql``)."""

    db: Database
    sql: Statements

    # -- reading --------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        row = self.db.run(
            "reading a queued job",
            lambda conn: conn.execute(
                f"SELECT state, attempts, payload FROM {self.sql.queue} WHERE id = %s", (job_id,)
            ).fetchone(),
        )
        if row is None:
            return None
        job = Job.from_bytes(bytes(row[2]))
        job.attempts = row[1]
        if row[0] == 1:
            job.status = JobStatus.RUNNING
        return job

    def _scalar(self, what: str, statement: str, params: Sequence[Any] = ()) -> Any:
        row = self.db.run(what, lambda conn: conn.execute(statement, params).fetchone())
        return None if row is None else row[0]

    def qsize(self) -> int:
        return int(self._scalar("counting queued jobs", f"SELECT count(*) FROM {self.sql.queue} WHERE state = 0"))

    def running(self) -> int:
        """Number of claimed jobs (running somewhere, or held by a dead worker until its lease ends)."""
        return int(self._scalar("counting claimed jobs", f"SELECT count(*) FROM {self.sql.queue} WHERE state = 1"))

    def counts(self) -> dict[str, int]:
        rows = self.db.run(
            "counting queued jobs",
            lambda conn: conn.execute(
                f"SELECT state, attempts > 0, count(*) FROM {self.sql.queue} GROUP BY 1, 2"
            ).fetchall(),
        )
        out = {"queued": 0, "retrying": 0, "running": 0}
        for state, ran_before, n in rows:
            out["running" if state == 1 else ("retrying" if ran_before else "queued")] += int(n)
        return out

    def peek(self, limit: int = 50) -> list[Job]:
        rows = self.db.run(
            "reading queued jobs",
            lambda conn: conn.execute(
                f"SELECT attempts, payload FROM {self.sql.queue} WHERE state = 0 ORDER BY ready_at, id LIMIT %s",
                (limit,),
            ).fetchall(),
        )
        out: list[Job] = []
        for attempts, payload in rows:
            try:
                job = Job.from_bytes(bytes(payload))
            except SerializationError:
                continue  # the claimer records it as failed
            job.attempts = attempts
            out.append(job)
        return out

    def cancel(self, job_id: str) -> Job | None:
        row = self.db.run(
            "cancelling a job",
            lambda conn: conn.execute(
                f"DELETE FROM {self.sql.queue} WHERE id = %s AND state = 0 RETURNING attempts, func_name, payload",
                (job_id,),
            ).fetchone(),
        )
        if row is None:
            return None
        try:
            job = Job.from_bytes(bytes(row[2]))
        except SerializationError as exc:
            log.warning("cancelled job %s had an unreadable payload: %s", job_id, exc)
            return Job(id=job_id, func_name=row[1], attempts=row[0])
        job.attempts = row[0]
        return job

    def clear(self) -> int:
        return int(
            self.db.run(
                "clearing the queue",
                lambda conn: conn.execute(f"DELETE FROM {self.sql.queue} WHERE state = 0").rowcount,
            )
        )
