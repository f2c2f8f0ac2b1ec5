"""The watchdog: timeouts, leases and presence, on a thread of its own.

* Every executor's timeouts are enforced at least every tenth of a second
  (executors do not tell the watchdog when a job starts: that would cost on
  every job).
* The leases of every claim the worker holds (running, waiting in a prefetch,
  finished but not yet written) are renewed every third of ``NUVOM_LEASE_SECS``.
* ``beat()`` runs every ``every`` seconds: the worker's presence in the store.
* A watchdog that could not run for longer than a third of a lease (a task
  holding the GIL in C code: nothing of the worker's Python runs meanwhile)
  says so at WARNING, naming the jobs that were running: their leases, and
  those of the jobs claimed behind them, may have run out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from nuvom._engine import safe_log
from nuvom._engine.executors import Executors
from nuvom._engine.outcomes import OutcomeWriter
from nuvom.plugins.contracts import BaseJobQueue

__all__ = ["Watchdog"]

log = logging.getLogger("nuvom.worker")

# Longest the watchdog sleeps; bounds how late a timeout is noticed.
_TICK = 0.1
# How often the store is asked whether a held job's cancel was requested.
_CANCEL_EVERY = 0.5


class Watchdog:
    def __init__(
        self,
        queue: BaseJobQueue,
        executors: Executors,
        writer: OutcomeWriter,
        *,
        lease_secs: float,
        beat: Callable[[], None] | None = None,
        beat_every: float = 5.0,
    ) -> None:
        self.queue = queue
        self.executors = executors
        self.writer = writer
        self.lease_every = max(0.5, lease_secs / 3)
        self._beat = beat
        self._beat_every = beat_every
        self._asks_cancels = type(queue).cancel_requested is not BaseJobQueue.cancel_requested
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nuvom-watchdog", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        now = time.monotonic()
        next_lease = now + self.lease_every
        next_beat = now if self._beat is not None else float("inf")
        woke_by = now
        next_cancels = now + _CANCEL_EVERY
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if now - woke_by > self.lease_every:
                    self._starved(now - woke_by, woke_by)
                next_check = now + _TICK
                for ex in self.executors.started():
                    next_check = min(next_check, ex.check(now))
                if now >= next_lease:
                    self.renew_leases()
                    next_lease = now + self.lease_every
                if now >= next_beat:
                    assert self._beat is not None
                    self._beat()
                    next_beat = now + self._beat_every
                if self._asks_cancels and now >= next_cancels:
                    self._cancels()
                    next_cancels = now + _CANCEL_EVERY
                wait = min(next_check, next_lease, next_beat) - time.monotonic() + 0.001
            except BaseException:
                # A log handler that raises (EMFILE, say) must not end timeouts and leases.
                safe_log(log.exception, "watchdog pass failed; continuing")
                wait = _TICK
            wait = max(0.005, wait)
            woke_by = time.monotonic() + wait
            self._stop.wait(wait)

    def _starved(self, late: float, since: float) -> None:
        # The jobs that ran while the watchdog could not, ended since or not.
        running = ", ".join(f"{job.id} ({job.func_name})" for job in self.executors.running(since)[:5]) or "none"
        safe_log(
            log.warning,
            "the watchdog could not run for %.1f s: a task held the GIL (C code that never releases it); "
            "leases were not renewed meanwhile and may have run out, so another worker may run those jobs "
            "again; running: %s. Give such tasks executor='process' (a child process, a hard timeout)",
            late,
            running,
        )

    def _cancels(self) -> None:
        held = self.executors.held_ids()
        if not held:
            return
        try:
            requested = self.queue.cancel_requested(held)
        except Exception:
            safe_log(log.exception, "asking for cancel requests failed")
            return
        if requested:
            self.executors.cancel(requested)

    def renew_leases(self) -> None:
        ids = self.executors.held_ids() + self.writer.held_ids()
        if ids:
            try:
                self.queue.extend_leases(ids)
            except Exception:
                safe_log(log.exception, "renewing leases failed")
