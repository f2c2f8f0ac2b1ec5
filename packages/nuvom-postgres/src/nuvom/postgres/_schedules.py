"""Schedules of the PostgreSQL queue (:class:`nuvom.postgres.PostgresJobQueue`).

``nuvom_schedules`` holds one row per schedule: the schedule itself in
``payload`` and its progress in columns. ``nuvom_schedule_ticks`` holds one row
per claimed tick, with (schedule, tick) as primary key. A tick is claimed by one
statement that locks the schedule's row, inserts the tick's row, inserts its
job into ``nuvom_queue`` and moves ``next_run_at`` on: one transaction, so of
several workers racing for a tick exactly one inserts the row, and a crash
leaves either all of it or nothing. There is nothing to repair.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from nuvom import serialization
from nuvom.job import Job
from nuvom.plugins.contracts import BaseScheduleStore
from nuvom.postgres._sql import NOW
from nuvom.schedule import Schedule, tick_ms

if TYPE_CHECKING:
    import psycopg
    from nuvom.postgres._db import Database
    from nuvom.postgres._sql import Statements

__all__ = ["PostgresSchedules"]

# Claimed ticks older than this are deleted (the next_run_at check refuses them anyway).
_KEEP_TICKS_MS = 86_400_000

_COLUMNS = "key, paused, next_run_at, last_run_at, last_job_id, payload"


def _from_row(row: Any) -> Schedule:
    key, paused, next_run_at, last_run_at, last_job_id, payload = row
    s = Schedule.model_validate(serialization.loads(bytes(payload), what=f"schedule {key}"))
    s.paused, s.next_run_at, s.last_run_at, s.last_job_id = bool(paused), next_run_at, last_run_at, last_job_id
    return s


def _ms(value: float | None) -> int | None:
    return None if value is None else tick_ms(value)


class PostgresSchedules(BaseScheduleStore):
    """The schedule store half of the PostgreSQL queue (needs its ``db`` and ``sql``)."""

    db: Database
    sql: Statements

    def _rows(self, what: str, statement: str, params: Any = ()) -> list[Any]:
        return self.db.run(what, lambda conn: conn.execute(statement, params).fetchall())

    def upsert_schedule(self, schedule: Schedule) -> Schedule:
        payload = serialization.dumps(schedule.model_dump(mode="json"), what=f"schedule {schedule.key}")
        s = self.sql.schedules
        self._rows(
            "storing a schedule",
            f"INSERT INTO {s} ({_COLUMNS}, next_run_ms, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, {NOW}) "
            "ON CONFLICT (key) DO UPDATE SET paused = excluded.paused, next_run_at = excluded.next_run_at, "
            "next_run_ms = excluded.next_run_ms, last_run_at = excluded.last_run_at, "
            "last_job_id = excluded.last_job_id, payload = excluded.payload, updated_at = excluded.updated_at "
            "RETURNING key",
            (
                schedule.key,
                schedule.paused,
                schedule.next_run_at,
                schedule.last_run_at,
                schedule.last_job_id,
                payload,
                _ms(schedule.next_run_at),
            ),
        )
        return schedule

    def get_schedule(self, key: str) -> Schedule | None:
        rows = self._rows("reading a schedule", f"SELECT {_COLUMNS} FROM {self.sql.schedules} WHERE key = %s", (key,))
        return _from_row(rows[0]) if rows else None

    def list_schedules(self) -> list[Schedule]:
        rows = self._rows("listing schedules", f"SELECT {_COLUMNS} FROM {self.sql.schedules} ORDER BY key")
        return [_from_row(row) for row in rows]

    def due_schedules(self, now: float) -> list[Schedule]:
        rows = self._rows(
            "listing due schedules",
            f"SELECT {_COLUMNS} FROM {self.sql.schedules} WHERE NOT paused AND next_run_at <= %s ORDER BY next_run_at",
            (now,),
        )
        return [_from_row(row) for row in rows]

    def next_due_at(self) -> float | None:
        rows = self._rows("polling schedules", f"SELECT min(next_run_at) FROM {self.sql.schedules} WHERE NOT paused")
        return None if rows[0][0] is None else float(rows[0][0])

    def set_schedule_paused(self, key: str, paused: bool) -> Schedule | None:
        rows = self._rows(
            "pausing a schedule",
            f"UPDATE {self.sql.schedules} SET paused = %s, updated_at = {NOW} WHERE key = %s RETURNING {_COLUMNS}",
            (paused, key),
        )
        return _from_row(rows[0]) if rows else None

    def delete_schedule(self, key: str) -> bool:
        s, t = self.sql.schedules, self.sql.ticks
        rows = self._rows(
            "cancelling a schedule",
            f"WITH t AS (DELETE FROM {t} WHERE schedule_key = %s) DELETE FROM {s} WHERE key = %s RETURNING key",
            (key, key),
        )
        return bool(rows)

    def claim_tick(self, key: str, tick: float, job: Job | None, next_run_at: float | None) -> bool:
        ms = tick_ms(tick)
        s, t, q = self.sql.schedules, self.sql.ticks, self.sql.queue
        # The schedule's row is locked first: a racer waits for the winner's commit,
        # then finds next_run_at moved on (or the tick's row there) and claims nothing.
        ctes = [
            f"s AS (SELECT key FROM {s} WHERE key = %(key)s AND NOT paused AND next_run_ms IS NOT NULL "
            "AND %(ms)s >= next_run_ms FOR UPDATE)",
            f"t AS (INSERT INTO {t} (schedule_key, tick_ms, job_id, claimed_at) SELECT key, %(ms)s, %(job_id)s, {NOW} "
            "FROM s ON CONFLICT DO NOTHING RETURNING schedule_key)",
            f"u AS (UPDATE {s} SET next_run_at = %(next)s, next_run_ms = %(next_ms)s, last_run_at = %(tick)s, "
            f"last_job_id = coalesce(%(job_id)s, last_job_id), updated_at = {NOW} FROM t WHERE key = t.schedule_key)",
            f"old AS (DELETE FROM {t} WHERE schedule_key = %(key)s AND tick_ms < %(ms)s - {_KEEP_TICKS_MS} "
            "AND EXISTS (SELECT 1 FROM t))",
        ]
        params: dict[str, Any] = {
            "key": key,
            "ms": ms,
            "job_id": None if job is None else job.id,
            "next": next_run_at,
            "next_ms": _ms(next_run_at),
            "tick": tick,
        }
        tail = ""
        if job is not None:
            ctes += [
                f"j AS (INSERT INTO {q} (id, func_name, queue, priority, ready_at, attempts, timeout_secs, "
                f"created_at, payload) SELECT %(id)s, %(func)s, %(queue)s, %(priority)s, "
                f"{NOW} + (%(due_at)s - %(sent)s), %(attempts)s, %(timeout)s, %(created)s, %(payload)s "
                "FROM t ON CONFLICT (id) DO NOTHING RETURNING id)",
                f"n AS (SELECT pg_notify('{self.sql.jobs_channel}', '') FROM j)",
            ]
            tail = " UNION ALL SELECT 0 FROM n"
            params.update(
                id=job.id,
                func=job.func_name,
                queue=job.queue,
                priority=job.priority,
                due_at=job.due_at,
                attempts=job.attempts,
                timeout=job.timeout_secs,
                created=job.created_at,
                payload=job.to_bytes(),
            )
        statement = "WITH " + ", ".join(ctes) + " SELECT 1 FROM t" + tail

        def claim(conn: psycopg.Connection[Any]) -> bool:
            params["sent"] = time.time()
            return any(row[0] == 1 for row in conn.execute(statement, params).fetchall())

        return self.db.run("claiming a scheduled tick", claim)
