"""Schedules of the SQLite queue (:class:`nuvom.sqlite.SQLiteJobQueue`).

``nuvom_schedules`` holds one row per schedule: the schedule itself in
``payload`` and its progress in columns. ``nuvom_schedule_ticks`` holds one
row per claimed tick, with (schedule, tick) as primary key: a tick is claimed
by inserting that row, in the same transaction that inserts its job into
``nuvom_queue`` and moves the schedule's ``next_run_at``. Of several
processes racing for a tick exactly one inserts the row; a crash rolls back
all three statements together. Added by schema migration 2.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from nuvom import serialization
from nuvom.job import Job
from nuvom.plugins.contracts import BaseScheduleStore
from nuvom.schedule import Schedule, tick_ms
from nuvom.sqlite._control import INSERT_QUEUED, queue_row

if TYPE_CHECKING:
    import sqlite3

    from nuvom.sqlite._db import Database

__all__ = ["SQLiteSchedules"]

# Claimed ticks older than this are deleted (the next_run_at check covers them).
_KEEP_TICKS_SECS = 86400.0

_COLUMNS = "key, paused, next_run_at, last_run_at, last_job_id, payload"


def _from_row(row: Any) -> Schedule:
    key, paused, next_run_at, last_run_at, last_job_id, payload = row
    s = Schedule.model_validate(serialization.loads(payload, what=f"schedule {key}"))
    s.paused, s.next_run_at, s.last_run_at, s.last_job_id = bool(paused), next_run_at, last_run_at, last_job_id
    return s


class SQLiteSchedules(BaseScheduleStore):
    """The schedule store half of the SQLite queue (needs its ``db``)."""

    db: Database
    _local_writes: int

    def upsert_schedule(self, schedule: Schedule) -> Schedule:
        payload = serialization.dumps(schedule.model_dump(mode="json"), what=f"schedule {schedule.key}")
        with self.db.write("storing a schedule") as conn:
            conn.execute(
                f"INSERT INTO nuvom_schedules ({_COLUMNS}, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET paused = excluded.paused, next_run_at = excluded.next_run_at, "
                "last_run_at = excluded.last_run_at, last_job_id = excluded.last_job_id, "
                "payload = excluded.payload, updated_at = excluded.updated_at",
                (
                    schedule.key,
                    int(schedule.paused),
                    schedule.next_run_at,
                    schedule.last_run_at,
                    schedule.last_job_id,
                    payload,
                    time.time(),
                ),
            )
        return schedule

    def get_schedule(self, key: str) -> Schedule | None:
        row = self.db.read(
            lambda c: c.execute(f"SELECT {_COLUMNS} FROM nuvom_schedules WHERE key = ?", (key,)).fetchone()
        )
        return None if row is None else _from_row(row)

    def list_schedules(self) -> list[Schedule]:
        rows = self.db.read(lambda c: c.execute(f"SELECT {_COLUMNS} FROM nuvom_schedules ORDER BY key").fetchall())
        return [_from_row(r) for r in rows]

    def due_schedules(self, now: float) -> list[Schedule]:
        rows = self.db.read(
            lambda c: c.execute(
                f"SELECT {_COLUMNS} FROM nuvom_schedules WHERE paused = 0 AND next_run_at <= ? ORDER BY next_run_at",
                (now,),
            ).fetchall()
        )
        return [_from_row(r) for r in rows]

    def next_due_at(self) -> float | None:
        row = self.db.read(
            lambda c: c.execute("SELECT min(next_run_at) FROM nuvom_schedules WHERE paused = 0").fetchone(),
            "polling schedules",
        )
        return None if row[0] is None else float(row[0])

    def set_schedule_paused(self, key: str, paused: bool) -> Schedule | None:
        with self.db.write("pausing a schedule") as conn:
            conn.execute(
                "UPDATE nuvom_schedules SET paused = ?, updated_at = ? WHERE key = ?", (int(paused), time.time(), key)
            )
        return self.get_schedule(key)

    def delete_schedule(self, key: str) -> bool:
        with self.db.write("cancelling a schedule") as conn:
            conn.execute("DELETE FROM nuvom_schedule_ticks WHERE schedule_key = ?", (key,))
            return int(conn.execute("DELETE FROM nuvom_schedules WHERE key = ?", (key,)).rowcount) > 0

    def claim_tick(self, key: str, tick: float, job: Job | None, next_run_at: float | None) -> bool:
        ms = tick_ms(tick)
        # In its task's named queue, at its priority.
        job_row = None if job is None else queue_row(job)
        with self.db.write("claiming a scheduled tick") as conn:
            if not _claimable(conn, key, ms):
                return False
            inserted = conn.execute(
                "INSERT OR IGNORE INTO nuvom_schedule_ticks (schedule_key, tick_ms, job_id, claimed_at) "
                "VALUES (?, ?, ?, ?)",
                (key, ms, None if job is None else job.id, time.time()),
            ).rowcount
            if not inserted:
                return False
            if job_row is not None:
                conn.execute(INSERT_QUEUED, job_row)
            conn.execute(
                "UPDATE nuvom_schedules SET next_run_at = ?, last_run_at = ?, "
                "last_job_id = coalesce(?, last_job_id) WHERE key = ?",
                (next_run_at, tick, None if job is None else job.id, key),
            )
            if ms % 64 == 0:  # now and then, not on every claim
                conn.execute(
                    "DELETE FROM nuvom_schedule_ticks WHERE schedule_key = ? AND tick_ms < ?",
                    (key, ms - int(_KEEP_TICKS_SECS * 1000)),
                )
        if job_row is not None:
            self._local_writes += 1  # this process's pollers look again
        return True


def _claimable(conn: sqlite3.Connection, key: str, ms: int) -> bool:
    row = conn.execute("SELECT paused, next_run_at FROM nuvom_schedules WHERE key = ?", (key,)).fetchone()
    if row is None or row[0] or row[1] is None:
        return False
    return ms >= tick_ms(float(row[1]))
