"""Reading and steering the PostgreSQL queue (dashboards, the CLI, the SDK):
:class:`~nuvom.postgres.PostgresJobQueue`'s methods that claim nothing."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nuvom.errors import SerializationError
from nuvom.job import DEFAULT_QUEUE, Job, JobStatus
from nuvom.postgres._sql import texts

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
        elif row[0] == 2:
            job.status = JobStatus.WAITING
        elif job.status is JobStatus.WAITING:
            job.status = JobStatus.PENDING  # released: its payload was written while it waited
        return job

    def _scalar(self, what: str, statement: str, params: Sequence[Any] = ()) -> Any:
        row = self.db.run(what, lambda conn: conn.execute(statement, params).fetchone())
        return None if row is None else row[0]

    def qsize(self) -> int:
        return int(self._scalar("counting queued jobs", f"SELECT count(*) FROM {self.sql.queue} WHERE state <> 1"))

    def running(self) -> int:
        """Number of claimed jobs (running somewhere, or held by a dead worker until its lease ends)."""
        return int(self._scalar("counting claimed jobs", f"SELECT count(*) FROM {self.sql.queue} WHERE state = 1"))

    def counts(self) -> dict[str, int]:
        out = {"queued": 0, "retrying": 0, "running": 0}
        for by_state in self.queue_counts().values():
            for key, n in by_state.items():
                out[key] += n
        return out

    def queue_counts(self) -> dict[str, dict[str, int]]:
        """:meth:`counts` by named queue (a job waiting for its parents counts as queued)."""
        rows = self.db.run(
            "counting queued jobs",
            lambda conn: conn.execute(
                f"SELECT queue, state, attempts > 0, count(*) FROM {self.sql.queue} GROUP BY 1, 2, 3"
            ).fetchall(),
        )
        out: dict[str, dict[str, int]] = {DEFAULT_QUEUE: {"queued": 0, "retrying": 0, "running": 0}}
        for queue, state, ran_before, n in rows:
            counts = out.setdefault(queue, {"queued": 0, "retrying": 0, "running": 0})
            counts["running" if state == 1 else ("retrying" if ran_before else "queued")] += int(n)
        return dict(sorted(out.items()))

    def peek(self, limit: int = 50) -> list[Job]:
        rows = self.db.run(
            "reading queued jobs",
            lambda conn: conn.execute(
                # The first ``limit`` of each queue (its due index in order, the queues
                # found by a walk of that index), then the first ``limit`` of those.
                f"WITH RECURSIVE qs AS (SELECT min(queue) AS queue FROM {self.sql.queue} UNION ALL "
                f"SELECT (SELECT min(queue) FROM {self.sql.queue} WHERE queue > qs.queue) FROM qs "
                "WHERE qs.queue IS NOT NULL) "
                "SELECT p.attempts, p.payload FROM qs, LATERAL (SELECT attempts, payload, ready_at, id FROM "
                f"{self.sql.queue} WHERE queue = qs.queue AND state = 0 ORDER BY ready_at, id LIMIT %s) AS p "
                "ORDER BY p.ready_at, p.id LIMIT %s",
                (limit, limit),
            ).fetchall(),
        )
        out: list[Job] = []
        for attempts, payload in rows:
            try:
                job = Job.from_bytes(bytes(payload))
            except SerializationError:
                continue  # the claimer records it as failed
            job.attempts = attempts
            if job.status is JobStatus.WAITING:
                job.status = JobStatus.PENDING  # released: its payload was written while it waited
            out.append(job)
        return out

    def cancel(self, job_id: str) -> Job | None:
        """Remove a job not claimed (due, delayed or waiting for its parents);
        the jobs waiting only for it are released in the same statement."""
        statement = (
            f"WITH done AS (DELETE FROM {self.sql.queue} WHERE id = %s AND state <> 1 "
            f"RETURNING attempts, func_name, payload, children), {self.sql.release} "
            "SELECT attempts, func_name, payload, (SELECT count(*) FROM rel) FROM done"
        )
        row = self.db.run("cancelling a job", lambda conn: conn.execute(statement, (job_id,)).fetchone())
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
        statement = (
            f"WITH done AS (DELETE FROM {self.sql.queue} WHERE state <> 1 RETURNING children), {self.sql.release} "
            "SELECT (SELECT count(*) FROM done), (SELECT count(*) FROM rel)"
        )
        return int(self._scalar("clearing the queue", statement))

    # -- job control (issue 29) -------------------------------------------------
    def request_cancel(self, job_id: str) -> bool:
        statement = f"UPDATE {self.sql.queue} SET cancel_requested = true WHERE id = %s AND state = 1 RETURNING id"
        return self._scalar("requesting a cancel", statement, (job_id,)) is not None

    def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        if not job_ids:
            return set()
        statement = f"SELECT id FROM {self.sql.queue} WHERE id = ANY(%s::text[]) AND cancel_requested"
        rows = self.db.run(
            "reading cancel requests", lambda conn: conn.execute(statement, (texts(job_ids),)).fetchall()
        )
        return {row[0] for row in rows}

    def acquire_rate(self, key: str, limit: int, per_secs: float) -> float:
        """GCRA on one row per key, in one call of a function on the server, on
        the server's clock (``clock_timestamp()``, read once the key's row is
        locked), the clock of the queue's leases."""
        statement = f"SELECT {self.sql.rates_fn}(%s, %s, %s)"
        return float(self._scalar("taking a rate-limit slot", statement, (key, int(limit), float(per_secs))))

    def dependents(self, job_id: str) -> list[str]:
        statement = (
            f"SELECT DISTINCT c FROM {self.sql.queue} AS p, unnest(p.children) AS c WHERE p.id = %s "
            f"AND EXISTS (SELECT 1 FROM {self.sql.queue} AS x WHERE x.id = c AND x.state = 2) ORDER BY c"
        )
        rows = self.db.run("reading dependents", lambda conn: conn.execute(statement, (job_id,)).fetchall())
        return [row[0] for row in rows]
