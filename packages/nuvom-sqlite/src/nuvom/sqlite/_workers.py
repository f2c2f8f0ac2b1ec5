"""Worker presence of the SQLite queue (:class:`nuvom.sqlite.SQLiteJobQueue`).

``nuvom_workers`` (schema migration 5) holds one row per worker: its
:class:`~nuvom.plugins.contracts.WorkerInfo` as JSON in ``info`` (readable with
the sqlite3 shell's JSON functions), replaced at each heartbeat by one
autocommitted statement. Rows past ``drop_at`` are deleted by the next
heartbeat of any worker, and never listed.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from nuvom.errors import BackendError
from nuvom.plugins._presence import WorkerInfo, live_and_gone

if TYPE_CHECKING:
    import sqlite3

    from nuvom.sqlite._db import Database

__all__ = ["SQLitePresence"]

log = logging.getLogger("nuvom.sqlite")

_UPSERT = "INSERT OR REPLACE INTO nuvom_workers (worker_id, heartbeat_at, drop_at, info) VALUES (?, ?, ?, ?)"


class SQLitePresence:
    """Mixed into :class:`~nuvom.sqlite.SQLiteJobQueue` ahead of
    :class:`~nuvom.plugins.contracts.BaseJobQueue` (needs its ``db``)."""

    db: Database

    def publish_worker(self, info: WorkerInfo) -> None:
        row = (info.worker_id, info.heartbeat_at, info.drop_at, info.to_json().decode())

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(_UPSERT, row)
            conn.execute("DELETE FROM nuvom_workers WHERE drop_at <= ?", (time.time(),))

        # Shares a commit with whatever this process writes at the same moment.
        self.db.combined(write, "publishing a worker's presence")

    def remove_worker(self, worker_id: str) -> None:
        self.db.combined(
            lambda conn: conn.execute("DELETE FROM nuvom_workers WHERE worker_id = ?", (worker_id,)),
            "removing a worker's presence",
            one_statement=True,
        )

    def list_workers(self) -> list[WorkerInfo] | None:
        now = time.time()
        rows = self.db.read(
            lambda c: c.execute("SELECT worker_id, info FROM nuvom_workers WHERE drop_at > ?", (now,)).fetchall(),
            "listing workers",
        )
        records = []
        for worker_id, text in rows:
            info = WorkerInfo.from_json(text)
            if info is None:
                log.warning("worker %s's presence record is unreadable; dropped", worker_id)
                try:
                    self.remove_worker(worker_id)
                except BackendError:
                    pass  # a read-only file: the record stays, and is skipped again
            else:
                records.append(info)
        return live_and_gone(records, now)

    def describe(self) -> str:
        return f"sqlite {self.db.path}"
