"""The async executor: ``async def`` jobs on one event loop thread of the worker.

::

    dispatcher --submit--> loop thread: semaphore (NUVOM_ASYNC_CONCURRENCY) --> coroutine
                                                                                   |
    runner.settle (hooks, results) <-- settle thread <-- outcome ------------------+

* Thousands of awaiting jobs cost one thread, not one each: the loop runs
  up to ``concurrency`` coroutines at once; the others wait on the semaphore.
* A timeout cancels the coroutine (it sees a real ``CancelledError`` and its
  ``finally`` blocks run); after at most :data:`CANCEL_GRACE_SECS` the attempt
  is recorded as timed out and ``timeout_policy`` applies.
* Outcomes are settled on a separate thread: storing results is blocking I/O
  (SQLite, files), which must not stall the loop and every coroutine on it.
"""

from __future__ import annotations

import asyncio
import logging
import queue as queue_mod
import threading
import time
from collections.abc import Callable
from typing import Any

from nuvom._runner import JobRunner
from nuvom._settings import Settings
from nuvom._task import Task
from nuvom.job import Attempt, Job, effective_timeout

__all__ = ["CANCEL_GRACE_SECS", "AsyncExecutor"]

log = logging.getLogger("nuvom.worker.async")

#: How long a cancelled coroutine may take to unwind (its ``finally`` blocks)
#: before its attempt is settled anyway.
CANCEL_GRACE_SECS = 1.0


class _Running:
    __slots__ = ("attempt", "future", "interrupted", "job", "task")

    def __init__(self, job: Job, task: Task[Any], attempt: Attempt, future: asyncio.Future[Any]) -> None:
        self.job, self.task, self.attempt, self.future = job, task, attempt, future
        self.interrupted = False


class AsyncExecutor:
    """Runs async jobs for a :class:`~nuvom.worker.Worker`.

    ``on_free()`` is called each time a job leaves the executor (the worker
    may claim more); ``handback(jobs)`` returns jobs to the queue.
    """

    kind = "async"

    def __init__(
        self,
        *,
        runner: JobRunner,
        settings: Settings,
        batch_size: int,
        on_free: Callable[[], None],
        handback: Callable[[list[Job]], None],
    ) -> None:
        self.runner = runner
        self.concurrency = settings.async_concurrency
        self.default_timeout = settings.job_timeout_secs
        self.default_policy = settings.timeout_policy
        self.capacity = self.concurrency + batch_size
        self._on_free = on_free
        self._handback = handback
        self._held = 0  # submitted and not yet settled
        self._held_lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sem: asyncio.Semaphore | None = None
        self._loop_thread: threading.Thread | None = None
        self._settle_q: queue_mod.SimpleQueue[Callable[[], None] | None] = queue_mod.SimpleQueue()
        self._settle_thread: threading.Thread | None = None
        self._idle = threading.Condition(self._held_lock)

    # -- life -----------------------------------------------------------------
    def start(self) -> None:
        ready = threading.Event()

        def run_loop() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            self._sem = asyncio.Semaphore(self.concurrency)
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._loop_thread = threading.Thread(target=run_loop, name="nuvom-async-loop", daemon=True)
        self._loop_thread.start()
        self._settle_thread = threading.Thread(target=self._settle_forever, name="nuvom-async-settle", daemon=True)
        self._settle_thread.start()
        ready.wait()

    def room(self) -> int:
        return self.capacity - self._held

    def inflight(self) -> int:
        return len(self._running)

    def job_ids(self) -> list[str]:
        return list(self._running)

    def submit(self, job: Job) -> None:
        self.submit_many([job])

    def submit_many(self, jobs: list[Job]) -> None:
        """Hand jobs to the loop in one wake-up (a claimed batch at once)."""
        loop = self._loop
        assert loop is not None, "start() first"
        with self._held_lock:
            self._held += len(jobs)
        loop.call_soon_threadsafe(self._spawn, jobs)

    def begin_stop(self) -> None:
        """Start no new job: the ones still waiting for a slot go back to the queue."""
        self._stopping = True
        if self._sem is not None and self._loop is not None:
            # Waiters on the semaphore wake only when a slot frees; wake them all
            # now so they hand their jobs back at once.
            self._loop.call_soon_threadsafe(self._release_waiters)

    def wait(self, deadline: float) -> bool:
        """Wait until every job has settled or ``deadline`` (monotonic); True if all did."""
        with self._idle:
            while self._held > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.1))
        return True

    def interrupt(self) -> int:
        """Cancel what still runs after the grace period: the attempts count, the
        jobs go back to the queue. Returns how many were interrupted."""
        loop = self._loop
        if loop is None:
            return 0
        running = list(self._running.values())
        for entry in running:
            entry.interrupted = True
            loop.call_soon_threadsafe(entry.future.cancel)
        self.wait(time.monotonic() + CANCEL_GRACE_SECS + 0.5)
        return len(running)

    def close(self) -> None:
        loop = self._loop
        if loop is not None and self._loop_thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            self._loop_thread.join(5.0)
        self._settle_q.put(None)
        if self._settle_thread is not None:
            self._settle_thread.join(10.0)

    # -- the loop thread ------------------------------------------------------
    def _release_waiters(self) -> None:
        sem = self._sem
        assert sem is not None
        # A semaphore released beyond its start value lets every waiter through;
        # they see _stopping and hand their job back without running it.
        for _ in range(self._held + 1):
            sem.release()

    def _spawn(self, jobs: list[Job]) -> None:
        # The loop keeps only weak references to tasks: hold each until it ends.
        for job in jobs:
            t = asyncio.ensure_future(self._run(job))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _run(self, job: Job) -> None:
        sem = self._sem
        assert sem is not None
        try:
            await sem.acquire()
        except BaseException:
            self._done()
            raise
        try:
            if self._stopping:
                job.mark_handed_back()
                self._settle(lambda: self._handback([job]))
                return
            await self._attempt(job)
        finally:
            sem.release()

    async def _attempt(self, job: Job) -> None:
        runner = self.runner
        task = runner.prepare(job)
        if task is None:
            self._done()
            return
        attempt = runner.start(job, task, "async")
        if attempt is None:
            self._done()
            return
        timeout = effective_timeout(job.timeout_secs, self.default_timeout)
        policy = job.timeout_policy or self.default_policy
        try:
            future: asyncio.Future[Any] = asyncio.ensure_future(task.fn(*job.args, **job.kwargs))
        except BaseException as exc:  # the call itself raised (bad arguments)
            raised = exc
            self._settle(lambda: runner.settle(job, task, attempt, False, raised))
            return
        entry = _Running(job, task, attempt, future)
        self._running[job.id] = entry
        try:
            done, _ = await asyncio.wait({future}, timeout=timeout)
            timed_out = False
            if not done and not entry.interrupted:
                if policy == "ignore":
                    log.warning(
                        "job %s (%s) exceeded %.1f s; timeout_policy=ignore lets it run on",
                        job.id,
                        job.func_name,
                        timeout,
                    )
                    await asyncio.wait({future})
                else:
                    timed_out = True
                    future.cancel()
                    await asyncio.wait({future}, timeout=CANCEL_GRACE_SECS)
        finally:
            del self._running[job.id]
        if entry.interrupted:
            if not future.done():
                future.cancel()
            job.mark_interrupted()
            self._settle(lambda: self._handback([job]))
            return
        if timed_out:
            log.warning(
                "job %s (%s) timed out after %.1f s (policy %s); its coroutine was cancelled",
                job.id,
                job.func_name,
                timeout,
                policy,
            )
            expired = TimeoutError(f"job exceeded its timeout of {timeout:g} s (timeout_secs)")
            attempt.finished_at = time.time()
            self._settle(lambda: runner.fail_attempt(job, task, attempt, expired, timed_out=True))
            return
        if future.cancelled():
            # Cancelled by itself or by code it awaited: an error of the attempt.
            failure: BaseException = asyncio.CancelledError("the task's coroutine was cancelled")
            self._settle(lambda: runner.settle(job, task, attempt, False, failure))
            return
        error = future.exception()
        ok, value = (True, future.result()) if error is None else (False, error)
        attempt.finished_at = time.time()
        self._settle(lambda: runner.settle(job, task, attempt, ok, value))

    def _settle(self, fn: Callable[[], None]) -> None:
        def settle_and_free() -> None:
            try:
                fn()
            finally:
                self._done()

        self._settle_q.put(settle_and_free)

    def _done(self) -> None:
        with self._idle:
            self._held -= 1
            self._idle.notify_all()
        self._on_free()

    # -- the settle thread ----------------------------------------------------
    def _settle_forever(self) -> None:
        q = self._settle_q
        while True:
            fn = q.get()
            if fn is None:
                return
            try:
                fn()
            except Exception:
                log.exception("settling an async job failed")
