"""In-process backends: fast, and gone when the process ends.

Useful for tests and for apps that run their worker in the same process
(``with Worker(): ...``). Producers in other processes cannot see this queue.
It keeps everything the contract describes (named queues and priorities,
unique keys, workflows, cancel requests), and is the reference for stores
that do the same durably.
"""

from __future__ import annotations

import _thread
import asyncio
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from nuvom.backends._memory_schedules import MemorySchedules
from nuvom.backends._memory_workers import MemoryPresence
from nuvom.job import DEFAULT_QUEUE, TERMINAL_STATUSES, Job, JobStatus
from nuvom.plugins.contracts import BaseJobQueue, BaseResultBackend, BaseScheduleStore
from nuvom.schedule import Schedule

if TYPE_CHECKING:
    from nuvom._settings import Settings

__all__ = ["MemoryJobQueue", "MemoryResultBackend"]

# A ready job in its queue's heap: higher priority first, then first queued.
_Entry = tuple[int, int, Job]


class MemoryJobQueue(MemoryPresence, MemorySchedules, BaseJobQueue, BaseScheduleStore):
    shared_between_processes = False
    supports_queues = True
    supports_unique = True
    supports_workflows = True

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(settings)
        # The hot paths enter the lock itself (one C call) rather than the
        # Condition (a Python frame around it); wait/notify go through the Condition.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._custom_enqueue_many = type(self).enqueue_many is not MemoryJobQueue.enqueue_many
        self._ready: dict[str, list[_Entry]] = {}
        # Jobs with a not-before time wait in a heap until due.
        self._delayed: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._claimed: dict[str, Job] = {}
        # Every job the queue holds (ready, delayed, claimed, waiting): a
        # workflow job waits while one of its parents is in here.
        self._held: dict[str, Job] = {}
        self._waiting: dict[str, Job] = {}
        self._blockers: dict[str, set[str]] = {}  # waiting job -> its parents still held
        self._children: dict[str, set[str]] = {}  # held job -> the jobs waiting for it
        self._unique: dict[str, str] = {}  # unique key -> the job holding it
        self._cancels: set[str] = set()
        # Claimers blocked in pop_batch: enqueue notifies the Condition only for them.
        self._cond_waiters = 0
        self._schedules: dict[str, Schedule] = {}
        # Claimed ticks per schedule (ms); older ones are pruned, the next_run_at check covers them.
        self._ticks: dict[str, set[int]] = {}

    # -- producing ----------------------------------------------------------
    def enqueue(self, job: Job) -> None:
        # A subclass that changes enqueue_many (testing.EagerQueue) gets it for single jobs too.
        if self._custom_enqueue_many:
            self.enqueue_many((job,))
            return
        with self._lock:
            self._place_locked(job, None)
            if self._cond_waiters:
                # One claimer woken per job, not every waiting one (notify_all).
                self._cond.notify()

    def enqueue_many(self, jobs: Sequence[Job]) -> None:
        now = time.time()
        with self._lock:
            for job in jobs:
                self._place_locked(job, now)
            if self._cond_waiters:
                self._cond.notify(len(jobs))

    def enqueue_unique(self, job: Job) -> str:
        assert job.unique_key is not None
        with self._lock:
            holder = self._unique.get(job.unique_key)
            if holder is not None:
                return holder
            self._unique[job.unique_key] = job.id
            self._place_locked(job, None)
            if self._cond_waiters:
                self._cond.notify()
        return job.id

    def _place_locked(self, job: Job, now: float | None) -> None:
        """Put one queued job where it goes, the lock held: waiting for its
        parents, the delayed heap, or its queue's ready heap. ``now`` ``None``:
        the clock is read only for a job with a not-before time."""
        self._held[job.id] = job
        flow = job.flow
        if flow is not None and job.id not in self._waiting:
            blockers = {parent for parent in flow.parents if parent in self._held}
            if blockers:
                job.status = JobStatus.WAITING
                self._waiting[job.id] = job
                self._blockers[job.id] = blockers
                for parent in blockers:
                    self._children.setdefault(parent, set()).add(job.id)
                return
            if job.status is JobStatus.WAITING:
                job.status = JobStatus.PENDING
        not_before = job.not_before
        if not_before is not None and not_before > (time.time() if now is None else now):
            heapq.heappush(self._delayed, (not_before, next(self._seq), job))
        else:
            self._push_ready(job)

    def _push_ready(self, job: Job) -> None:
        heapq.heappush(self._ready.setdefault(job.queue, []), (-job.priority, next(self._seq), job))

    def _promote_due(self) -> None:
        """Move due delayed jobs to their ready heaps."""
        now = time.time()
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            self._push_ready(heapq.heappop(delayed)[2])

    # -- claiming -----------------------------------------------------------
    def claim(self, batch_size: int) -> list[Job]:
        with self._lock:
            return self._claim_locked(batch_size, (DEFAULT_QUEUE,))

    def _claim_locked(self, batch_size: int, queues: Sequence[str]) -> list[Job]:
        if self._delayed:
            self._promote_due()
        out: list[Job] = []
        for name in queues:
            ready = self._ready.get(name)
            while ready and len(out) < batch_size:
                job = heapq.heappop(ready)[2]
                job.mark_claimed()
                self._claimed[job.id] = job
                out.append(job)
        return out

    def pop_batch(self, batch_size: int, timeout: float | None = 0.0) -> list[Job]:
        return self._pop(batch_size, timeout, (DEFAULT_QUEUE,))

    def claim_batch(
        self,
        limit: int,
        timeout: float | None,
        idle: Callable[[], int],
        queues: Sequence[str] = (DEFAULT_QUEUE,),
    ) -> list[Job]:
        # No start marks kept here: idle slots need none.
        return self._pop(limit, timeout, queues)

    def _pop(self, batch_size: int, timeout: float | None, queues: Sequence[str]) -> list[Job]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                jobs = self._claim_locked(batch_size, queues)
                if jobs or timeout == 0:
                    if jobs and any(self._ready.get(name) for name in queues):
                        # Jobs are left for another waiting claimer: pass the wake-up on.
                        self._cond.notify()
                    return jobs
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    return []
                if self._delayed:
                    until_due = max(0.0, self._delayed[0][0] - time.time())
                    wait = until_due if wait is None else min(wait, until_due)
                self._cond_waiters += 1
                try:
                    self._cond.wait(wait)
                finally:
                    self._cond_waiters -= 1

    # -- settling claims ----------------------------------------------------
    def complete(self, jobs: Sequence[Job], results: BaseResultBackend) -> None:
        # The contract's default order: outcomes stored, then the jobs leave the queue.
        results.store(jobs)
        self.ack([job.id for job in jobs])

    def ack(self, job_ids: Sequence[str]) -> None:
        with self._lock:
            if not (self._unique or self._cancels or self._children):
                # No key, cancel request or waiting job refers to any held job:
                # leaving the queue is forgetting them (the common case, kept cheap).
                claimed, held = self._claimed, self._held
                for job_id in job_ids:
                    claimed.pop(job_id, None)
                    held.pop(job_id, None)
                return
            released = 0
            for job_id in job_ids:
                self._claimed.pop(job_id, None)
                released += self._leave_locked(job_id)
            if released and self._cond_waiters:
                self._cond.notify(released)

    def _leave_locked(self, job_id: str) -> int:
        """``job_id`` has left the queue: free its unique key and cancel request,
        release the jobs that waited only for it; returns how many were released."""
        job = self._held.pop(job_id, None)
        if job is not None and job.unique_key is not None and self._unique.get(job.unique_key) == job_id:
            del self._unique[job.unique_key]
        self._cancels.discard(job_id)
        released = 0
        for child_id in self._children.pop(job_id, ()):
            blockers = self._blockers.get(child_id)
            if blockers is None:
                continue
            blockers.discard(job_id)
            if not blockers:
                del self._blockers[child_id]
                child = self._waiting.pop(child_id)
                child.status = JobStatus.PENDING
                self._place_locked(child, None)
                released += 1
        return released

    def requeue(self, jobs: Sequence[Job]) -> None:
        with self._lock:
            for job in jobs:
                self._claimed.pop(job.id, None)
                self._place_locked(job, None)
            if self._cond_waiters:
                self._cond.notify(len(jobs))

    def request_cancel(self, job_id: str) -> bool:
        with self._lock:
            if job_id not in self._claimed:
                return False
            self._cancels.add(job_id)
            return True

    def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        with self._lock:
            return self._cancels.intersection(job_ids) if self._cancels else set()

    # -- reading ------------------------------------------------------------
    def _waiting_jobs(self) -> Iterator[Job]:
        """Every job not claimed: ready, delayed, waiting for its parents."""
        for heap in self._ready.values():
            yield from (entry[2] for entry in heap)
        yield from (item[2] for item in self._delayed)
        yield from self._waiting.values()

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._held.get(job_id)

    def qsize(self) -> int:
        with self._lock:
            return len(self._held) - len(self._claimed)

    def counts(self) -> dict[str, int]:
        return _counts(*self._snapshot(None))

    def queue_counts(self) -> dict[str, dict[str, int]]:
        with self._lock:
            names = {job.queue for job in self._held.values()} | {DEFAULT_QUEUE}
        return {name: _counts(*self._snapshot(name)) for name in sorted(names)}

    def _snapshot(self, queue: str | None) -> tuple[list[Job], int]:
        with self._lock:
            waiting = [job for job in self._waiting_jobs() if queue is None or job.queue == queue]
            running = sum(1 for job in self._claimed.values() if queue is None or job.queue == queue)
        return waiting, running

    def peek(self, limit: int = 50) -> list[Job]:
        with self._lock:
            ready = sorted((entry for heap in self._ready.values() for entry in heap), key=lambda e: e[:2])
            delayed = [item[2] for item in sorted(self._delayed, key=lambda item: item[:2])]
            return list(itertools.islice(itertools.chain((e[2] for e in ready), delayed), limit))

    def dependents(self, job_id: str) -> list[str]:
        with self._lock:
            return sorted(self._children.get(job_id, ()))

    def cancel(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._held.get(job_id)
            if job is None or job_id in self._claimed:
                return None
            if self._waiting.pop(job_id, None) is not None:
                for parent in self._blockers.pop(job_id, ()):
                    self._children.get(parent, set()).discard(job_id)
            else:
                self._remove_ready_locked(job_id)
            released = self._leave_locked(job_id)
            if released and self._cond_waiters:
                self._cond.notify(released)
            return job

    def _remove_ready_locked(self, job_id: str) -> None:
        for heap in self._ready.values():
            for k, entry in enumerate(heap):
                if entry[2].id == job_id:
                    heap.pop(k)
                    heapq.heapify(heap)
                    return
        for k, item in enumerate(self._delayed):
            if item[2].id == job_id:
                self._delayed.pop(k)
                heapq.heapify(self._delayed)
                return

    def clear(self) -> int:
        with self._lock:
            ids = [job.id for job in self._waiting_jobs()]
            for job_id in ids:
                self.cancel(job_id)
            return len(ids)


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


def _counts(waiting: list[Job], running: int) -> dict[str, int]:
    retrying = sum(1 for job in waiting if job.attempts > 0)
    return {"queued": len(waiting) - retrying, "retrying": retrying, "running": running}
