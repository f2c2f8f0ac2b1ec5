"""The in-process result backend (:class:`MemoryResultBackend`), re-exported by
:mod:`nuvom.backends.memory`."""

from __future__ import annotations

import _thread
import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from nuvom.job import TERMINAL_STATUSES, Job, JobStatus
from nuvom.plugins.contracts import BaseResultBackend

if TYPE_CHECKING:
    from nuvom._settings import Settings

__all__ = ["MemoryResultBackend"]


class MemoryResultBackend(BaseResultBackend):
    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(settings)
        self._lock = threading.Lock()
        self._records: dict[str, Job] = {}
        # One held lock per waiting get(), released by the store of its job: a
        # store wakes only the waiters of the jobs it stores (a shared condition
        # woke every waiter on every store), and a bare lock is the cheapest
        # hand-off CPython has (an Event is a Condition and two locks).
        self._waiting: dict[str, list[_thread.LockType]] = {}
        # Async waiters: a callback per awaited job, called (from the storing
        # thread) with no lock held; it hands over to its loop thread-safely.
        self._callbacks: dict[str, list[Callable[[], None]]] = {}

    def store(self, jobs: Sequence[Job]) -> None:
        with self._lock:
            records, waiting = self._records, self._waiting
            for job in jobs:
                records.pop(job.id, None)  # keep insertion order = finish order
                records[job.id] = job
                if waiting:
                    for held in waiting.pop(job.id, ()):
                        held.release()
            callbacks = [cb for job in jobs for cb in self._callbacks.pop(job.id, ())] if self._callbacks else []
        for callback in callbacks:
            callback()

    def get_full(self, job_id: str) -> Job | None:
        return self._records.get(job_id)

    def wait(self, job_id: str, timeout: float | None = None) -> Job | None:
        # A finished job is found without the lock (a dict read is atomic), the
        # common case of a get() called after the job ran.
        record = self._records.get(job_id)
        if record is not None:
            return record
        with self._lock:
            record = self._records.get(job_id)
            if record is not None:
                return record
            held = _thread.allocate_lock()
            held.acquire()
            self._waiting.setdefault(job_id, []).append(held)
        if not held.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            with self._lock:
                waiters = self._waiting.get(job_id, [])
                if held in waiters:
                    waiters.remove(held)
                    if not waiters:
                        del self._waiting[job_id]
        return self._records.get(job_id)

    async def wait_async(self, job_id: str, timeout: float | None = None) -> Job | None:
        loop = asyncio.get_running_loop()
        stored = loop.create_future()

        def resolve() -> None:
            if not stored.done():
                stored.set_result(None)

        def wake() -> None:
            try:
                loop.call_soon_threadsafe(resolve)
            except RuntimeError:
                pass  # the waiter's loop has closed: nobody is waiting any more

        with self._lock:
            record = self._records.get(job_id)
            if record is not None:
                return record
            self._callbacks.setdefault(job_id, []).append(wake)
        try:
            await asyncio.wait_for(stored, timeout)
        except asyncio.TimeoutError:
            with self._lock:
                callbacks = self._callbacks.get(job_id, [])
                if wake in callbacks:
                    callbacks.remove(wake)
                    if not callbacks:
                        del self._callbacks[job_id]
        return self._records.get(job_id)

    def list_jobs(self, status: JobStatus | str | None = None, limit: int = 100, task: str | None = None) -> list[Job]:
        wanted = None if status is None else JobStatus(str(getattr(status, "value", status)).upper())
        out: list[Job] = []
        with self._lock:
            records = list(self._records.values())
        for job in sorted(records, key=lambda j: j.finished_at or 0.0, reverse=True):
            if (wanted is None or job.status is wanted) and (task is None or job.func_name == task):
                out.append(job)
                if len(out) >= limit:
                    break
        return out

    def count(self) -> int:
        return len(self._records)

    def counts(self) -> dict[str, int]:
        with self._lock:
            records = list(self._records.values())
        out = {status.value: 0 for status in TERMINAL_STATUSES}
        for job in records:
            out[job.status.value] = out.get(job.status.value, 0) + 1
        return out
