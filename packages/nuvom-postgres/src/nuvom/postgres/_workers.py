"""Worker presence of the PostgreSQL queue (:class:`nuvom.postgres.PostgresJobQueue`).

``nuvom_workers`` holds one row per worker: its
:class:`~nuvom.plugins.contracts.WorkerInfo` as ``jsonb`` in ``info``, replaced
at each heartbeat by one statement, which also deletes the rows past their
``drop_at``: records of workers that died go a few minutes later without
anyone sweeping. Times are the workers' clocks (the record's own
``heartbeat_at``), as on every store.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from nuvom.errors import BackendError
from nuvom.plugins._presence import WorkerInfo, live_and_gone
from nuvom.postgres._settings import public_url

if TYPE_CHECKING:
    from nuvom.postgres._db import Database
    from nuvom.postgres._sql import Statements

__all__ = ["PostgresPresence"]

log = logging.getLogger("nuvom.postgres")


class PostgresPresence:
    """Mixed into :class:`~nuvom.postgres.PostgresJobQueue` ahead of
    :class:`~nuvom.plugins.contracts.BaseJobQueue` (needs its ``db`` and ``sql``)."""

    db: Database
    sql: Statements

    def publish_worker(self, info: WorkerInfo) -> None:
        w = self.sql.workers
        statement = (
            f"WITH old AS (DELETE FROM {w} WHERE drop_at <= %s AND worker_id <> %s) "
            f"INSERT INTO {w} (worker_id, heartbeat_at, drop_at, info) VALUES (%s, %s, %s, %s::jsonb) "
            "ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, "
            "drop_at = excluded.drop_at, info = excluded.info"
        )
        params = (time.time(), info.worker_id, info.worker_id, info.heartbeat_at, info.drop_at, info.to_json().decode())
        self.db.run("publishing a worker's presence", lambda conn: conn.execute(statement, params))

    def remove_worker(self, worker_id: str) -> None:
        statement = f"DELETE FROM {self.sql.workers} WHERE worker_id = %s"
        self.db.run("removing a worker's presence", lambda conn: conn.execute(statement, (worker_id,)))

    def list_workers(self) -> list[WorkerInfo] | None:
        now = time.time()
        statement = f"SELECT worker_id, info::text FROM {self.sql.workers} WHERE drop_at > %s"
        rows = self.db.run("listing workers", lambda conn: conn.execute(statement, (now,)).fetchall())
        records = []
        for worker_id, text in rows:
            info = WorkerInfo.from_json(text)
            if info is None:
                log.warning("worker %s's presence record is unreadable; dropped", worker_id)
                try:
                    self.remove_worker(worker_id)
                except BackendError:
                    pass  # read-only: the record stays, and is skipped again
            else:
                records.append(info)
        return live_and_gone(records, now)

    def describe(self) -> str:
        schema = "" if self.db.schema == "nuvom" else f" (schema {self.db.schema})"
        return f"postgres {public_url(self.db.url)}{schema}"
