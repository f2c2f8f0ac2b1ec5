"""A worker's checkpoints, on a thread of their own.

A commit that finds the WAL past its threshold checkpoints it there and then:
it copies the WAL's pages into the database file and syncs both, while every
other write of the process waits behind it. On a busy worker that was a
commit in a hundred taking tens of milliseconds, and half of all the time
spent committing (bench/NOTES.md). A worker therefore checkpoints from a
thread of its own, a little and often, in ``PASSIVE`` mode (it never waits for
a reader or a writer): commits keep their threshold only as a safety net, for
when this thread falls behind or no worker runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from pathlib import Path

__all__ = ["Checkpointer"]

log = logging.getLogger("nuvom.sqlite")

#: How often the WAL's size is looked at.
_EVERY_SECS = 0.05
#: WAL size past which this thread checkpoints (1,000 pages of 4 KiB).
_THRESHOLD_BYTES = 4_096_000


class Checkpointer:
    """Checkpoints ``path``'s WAL while running (:meth:`start`, :meth:`stop`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._wal = f"{path}-wal"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="nuvom-sqlite-checkpoints", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        failing = False
        try:
            while not self._stop.wait(_EVERY_SECS):
                try:
                    if os.path.getsize(self._wal) < _THRESHOLD_BYTES:
                        continue
                except OSError:
                    continue  # no WAL yet, or the file moved away
                try:
                    if conn is None:
                        conn = sqlite3.connect(str(self.path), timeout=0, isolation_level=None, check_same_thread=False)
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    failing = False
                except sqlite3.Error as exc:
                    # Read-only, busy, gone: the commits' own threshold still holds;
                    # a fresh connection is opened for the next try.
                    if not failing:
                        failing = True
                        log.debug("background checkpoint of %s failed: %s", self.path, exc)
                    if conn is not None:
                        with contextlib.suppress(sqlite3.Error):
                            conn.close()
                        conn = None
        finally:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
