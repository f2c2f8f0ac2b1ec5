"""In-process backends: fast, and gone when the process ends.

Useful for tests and for apps that run their worker in the same process
(``with Worker(): ...``). Producers in other processes cannot see this queue.
"""

from __future__ import annotations

import _thread
import asyncio
import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from nuvom.backends._memory_workers import MemoryPresence
from nuvom.job import TERMINAL_STATUSES, Job, JobStatus
from nuvom.plugins.contracts import BaseJobQueue, BaseResultBackend, BaseScheduleStore
from nuvom.schedule import Schedule, tick_ms

if TYPE_CHECKING:
    from nuvom._settings import Settings

__all__ = ["MemoryJobQueue", "MemoryResultBackend"]


class MemoryJobQueue(MemoryPresence, BaseJobQueue, BaseScheduleStore):
    shared_between_processes = False

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(settings)
        # The hot paths enter the lock itself (one C call) rather than the
        # Condition (a Python frame around it); wait/notify go through the Condition.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._custom_enqueue_many = type(self).enqueue_many is not MemoryJobQueue.enqueue_many
        self._ready: deque[Job] = deque()
        # Jobs with a not-before time wait in a heap until due.
        self._delayed: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._claimed: dict[str, Job] = {}
        # Claimers blocked in pop_batch: enqueue notifies the Condition only for them.
        self._cond_waiters = 0
        self._schedules: dict[str, Schedule] = {}
        # Claimed ticks per schedule (ms); older ones are pruned, the next_run_at check covers them.
        self._ticks: dict[str, set[int]] = {}

    def enqueue(self, job: Job) -> None:
        # .delay()'s path, kept to one lock and one wake-up: the clock is read
        # only for a job with a not-before time. A subclass that changes
        # enqueue_many (testing.EagerQueue) gets it for single jobs too.
        if self._custom_enqueue_many:
            self.enqueue_many((job,))
            return
        with self._lock:
            self._place_locked(job, None)
            if self._cond_waiters:
                # One claimer woken per job, not every waiting one (notify_all); a
                # delayed job may be due before what a waiting claimer waits for.
                self._cond.notify()

    def enqueue_many(self, jobs: Sequence[Job]) -> None:
        now = time.time()
        with self._lock:
            for job in jobs:
                self._place_locked(job, now)
            if self._cond_waiters:
                self._cond.notify(len(jobs))

    def _place_locked(self, job: Job, now: float | None) -> None:
        """Put one queued job where it goes, the lock held: the delayed heap or
        the ready deque. ``now`` ``None``: the clock is read only for a job with
        a not-before time."""
        not_before = job.not_before
        if not_before is not None and not_before > (time.time() if now is None else now):
            heapq.heappush(self._delayed, (not_before, next(self._seq), job))
        else:
            self._ready.append(job)

    def _promote_due(self) -> float | None:
        """Move due delayed jobs to the ready deque; returns the next due time."""
        now = time.time()
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            self._ready.append(heapq.heappop(delayed)[2])
        return delayed[0][0] if delayed else None

    def claim(self, batch_size: int) -> list[Job]:
        with self._lock:
            return self._claim_locked(batch_size)

    def _claim_locked(self, batch_size: int) -> list[Job]:
        if self._delayed:
            self._promote_due()
        ready = self._ready
        out = []
        for _ in range(min(batch_size, len(ready))):
            job = ready.popleft()
            job.mark_claimed()
            self._claimed[job.id] = job
            out.append(job)
        return out

    def pop_batch(self, batch_size: int, timeout: float | None = 0.0) -> list[Job]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                jobs = self._claim_locked(batch_size)
                if jobs or timeout == 0:
                    if jobs and self._ready:
                        # Jobs are left for another waiting claimer: pass the wake-up on.
                        self._cond.notify()
                    return jobs
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    return []
                next_due = self._delayed[0][0] if self._delayed else None
                if next_due is not None:
                    until_due = max(0.0, next_due - time.time())
                    wait = until_due if wait is None else min(wait, until_due)
                self._cond_waiters += 1
                try:
                    self._cond.wait(wait)
                finally:
                    self._cond_waiters -= 1

    def complete(self, jobs: Sequence[Job], results: BaseResultBackend) -> None:
        # The contract's default (outcomes stored, then the claims dropped) without the list of ids.
        results.store(jobs)
        with self._lock:
            claimed = self._claimed
            for job in jobs:
                claimed.pop(job.id, None)

    def ack(self, job_ids: Sequence[str]) -> None:
        with self._lock:
            for job_id in job_ids:
                self._claimed.pop(job_id, None)

    def requeue(self, jobs: Sequence[Job]) -> None:
        with self._cond:
            for job in jobs:
                self._claimed.pop(job.id, None)
        self.enqueue_many(jobs)

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            if job_id in self._claimed:
                return self._claimed[job_id]
            for job in itertools.chain(self._ready, (item[2] for item in self._delayed)):
                if job.id == job_id:
                    return job
        return None

    def qsize(self) -> int:
        with self._cond:
            return len(self._ready) + len(self._delayed)

    def counts(self) -> dict[str, int]:
        with self._cond:
            waiting = list(itertools.chain(self._ready, (item[2] for item in self._delayed)))
            running = len(self._claimed)
        retrying = sum(1 for job in waiting if job.attempts > 0)
        return {"queued": len(waiting) - retrying, "retrying": retrying, "running": running}

    def peek(self, limit: int = 50) -> list[Job]:
        with self._cond:
            delayed = [item[2] for item in sorted(self._delayed)]
            return list(itertools.islice(itertools.chain(self._ready, delayed), limit))

    def cancel(self, job_id: str) -> Job | None:
        with self._cond:
            for job in self._ready:
                if job.id == job_id:
                    self._ready.remove(job)
                    return job
            for item in self._delayed:
                if item[2].id == job_id:
                    self._delayed.remove(item)
                    heapq.heapify(self._delayed)
                    return item[2]
        return None

    def clear(self) -> int:
        with self._cond:
            n = len(self._ready) + len(self._delayed)
            self._ready.clear()
            self._delayed.clear()
            return n

    # -- schedules ----------------------------------------------------------
    def upsert_schedule(self, schedule: Schedule) -> Schedule:
        with self._cond:
            self._schedules[schedule.key] = schedule.model_copy(deep=True)
        return schedule

    def get_schedule(self, key: str) -> Schedule | None:
        with self._cond:
            found = self._schedules.get(key)
            return None if found is None else found.model_copy(deep=True)

    def list_schedules(self) -> list[Schedule]:
        with self._cond:
            return [self._schedules[k].model_copy(deep=True) for k in sorted(self._schedules)]

    def next_due_at(self) -> float | None:
        with self._cond:
            times = [s.next_run_at for s in self._schedules.values() if not s.paused and s.next_run_at is not None]
        return min(times) if times else None

    def set_schedule_paused(self, key: str, paused: bool) -> Schedule | None:
        with self._cond:
            found = self._schedules.get(key)
            if found is None:
                return None
            found.paused = paused
            return found.model_copy(deep=True)

    def delete_schedule(self, key: str) -> bool:
        with self._cond:
            self._ticks.pop(key, None)
            return self._schedules.pop(key, None) is not None

    def claim_tick(self, key: str, tick: float, job: Job | None, next_run_at: float | None) -> bool:
        with self._cond:
            found = self._schedules.get(key)
            mark = tick_ms(tick)
            claimed = self._ticks.setdefault(key, set())
            if found is None or found.paused or mark in claimed:
                return False
            if found.next_run_at is None or mark < tick_ms(found.next_run_at):
                return False
            if len(claimed) > 64:
                claimed.intersection_update({m for m in claimed if m >= mark})
            claimed.add(mark)
            if job is not None:
                self.enqueue_many((job,))
                found.last_job_id = job.id
            found.last_run_at = tick
            found.next_run_at = next_run_at
            return True


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
