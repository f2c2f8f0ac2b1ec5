"""The async executor: ``async def`` jobs on one event loop thread of the worker.

::

    claim loop --submit--> loop thread: semaphore (NUVOM_ASYNC_CONCURRENCY) --> coroutine
                                                                                  |
    runner.settle (hooks, outcome writer) <-- settle thread <-- outcome ----------+

* Thousands of awaiting jobs cost one thread, not one each: the loop runs
  up to ``concurrency`` coroutines at once; the others wait on the semaphore.
* A timeout cancels the coroutine (it sees a real ``CancelledError`` and its
  ``finally`` blocks run); after at most :data:`CANCEL_GRACE_SECS` the attempt
  is recorded as timed out and ``timeout_policy`` applies.
* A coroutine that blocks the loop (``time.sleep``, blocking I/O) stops every
  other one, and their timers. Each job's coroutine is run through a tracker
  that knows which job holds the loop and since when; the watchdog logs a
  loop held past ``NUVOM_ASYNC_BLOCKED_WARN_SECS`` at WARNING, naming the job,
  and counts it. Deadlines are checked against when each coroutine really
  ended, so when the loop comes back every job past its deadline (the blocker
  included) is recorded as timed out, never as a late success.
* Outcomes are settled on a separate thread: storing results is blocking I/O
  (SQLite, files), which must not stall the loop and every coroutine on it.
"""

from __future__ import annotations

import asyncio
import logging
import queue as queue_mod
import threading
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any, ClassVar, Literal

from nuvom import _context, _fate, _tracing
from nuvom._engine import safe_log
from nuvom._engine.outcomes import OutcomeWriter
from nuvom._runner import JobRunner
from nuvom._settings import Settings
from nuvom._task import Task
from nuvom.job import Attempt, Job

__all__ = ["CANCEL_GRACE_SECS", "AsyncExecutor"]

log = logging.getLogger("nuvom.worker.async")

#: How long a cancelled coroutine may take to unwind (its ``finally`` blocks)
#: before its attempt is settled anyway.
CANCEL_GRACE_SECS = 1.0


class _OnLoop:
    """Which job's coroutine the loop is running now, and since when (monotonic):
    one attribute, so that the watchdog's thread never reads a job with
    another step's start time."""

    __slots__ = ("current",)

    def __init__(self) -> None:
        self.current: tuple[Job, float] | None = None


class _Tracked(Coroutine[Any, Any, Any]):
    """A job's coroutine, run step by step: records which job holds the loop
    during each step, and when the coroutine ended (``ended_at``, monotonic)."""

    __slots__ = ("_coro", "_job", "_on_loop", "ended_at")

    def __init__(self, coro: Coroutine[Any, Any, Any], job: Job, on_loop: _OnLoop) -> None:
        self._coro, self._job, self._on_loop = coro, job, on_loop
        self.ended_at: float | None = None

    def _step(self, fn: Callable[..., Any], *args: Any) -> Any:
        on_loop = self._on_loop
        on_loop.current = (self._job, time.monotonic())
        try:
            return fn(*args)
        except BaseException:
            # StopIteration (it returned) or its exception: it has ended now.
            self.ended_at = time.monotonic()
            raise
        finally:
            on_loop.current = None

    def send(self, value: Any) -> Any:
        return self._step(self._coro.send, value)

    def throw(self, *args: Any) -> Any:
        return self._step(self._coro.throw, *args)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        return self._coro.__await__()


class _Running:
    __slots__ = ("attempt", "future", "interrupted", "job", "task", "tracked")

    def __init__(self, job: Job, task: Task[Any], attempt: Attempt, future: asyncio.Future[Any], tracked: _Tracked):
        self.job, self.task, self.attempt, self.future, self.tracked = job, task, attempt, future, tracked
        self.interrupted = False


class AsyncExecutor:
    """Runs async jobs for a worker; ``on_free()`` is called each time a job leaves it."""

    kind: ClassVar[Literal["async"]] = "async"

    def __init__(
        self,
        *,
        runner: JobRunner,
        writer: OutcomeWriter,
        settings: Settings,
        prefetch: int,
        on_free: Callable[[], None],
    ) -> None:
        self.runner = runner
        self.writer = writer
        self.concurrency = settings.async_concurrency
        self.default_timeout = settings.job_timeout_secs
        self.default_policy = settings.timeout_policy
        self.blocked_warn_secs = settings.async_blocked_warn_secs
        self.capacity = self.concurrency + prefetch
        self._on_free = on_free
        self._held = 0  # submitted and not yet settled
        self._held_lock = threading.Lock()
        self._idle = threading.Condition(self._held_lock)
        self._waiting: dict[str, Job] = {}
        self._running: dict[str, _Running] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sem: asyncio.Semaphore | None = None
        self._loop_thread: threading.Thread | None = None
        self._settle_q: queue_mod.SimpleQueue[Callable[[], None] | None] = queue_mod.SimpleQueue()
        self._settle_thread: threading.Thread | None = None
        self._on_loop = _OnLoop()
        self._blocked: tuple[Job, float] | None = None  # the step reported as holding the loop
        #: How many times a job held the loop past the threshold (a metric).
        self.blocked_total = 0

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

    @property
    def slots(self) -> int:
        return self.concurrency

    def room(self) -> int:
        return self.capacity - self._held

    def hungry(self) -> bool:
        return self._held < self.concurrency

    def idle(self) -> int:
        return max(0, self.concurrency - self._held)

    def inflight(self) -> int:
        return len(self._running)

    def held_ids(self) -> list[str]:
        return [*self._waiting, *self._running]

    def running(self, since: float | None = None) -> list[Job]:
        return [entry.job for entry in list(self._running.values())]

    def submit(self, jobs: list[Job]) -> None:
        """Hand jobs to the loop in one wake-up (a claimed batch at once)."""
        loop = self._loop
        assert loop is not None, "start() first"
        with self._held_lock:
            self._held += len(jobs)
        for job in jobs:
            self._waiting[job.id] = job
        loop.call_soon_threadsafe(self._spawn, jobs)

    def cancel(self, job_id: str) -> None:
        """Cancel a running job's coroutine (it sees ``CancelledError`` at its next ``await``)."""
        entry = self._running.get(job_id)
        loop = self._loop
        if entry is not None and loop is not None:
            loop.call_soon_threadsafe(entry.future.cancel)

    def check(self, now: float) -> float:
        """Report a loop held by one job's step past the threshold: once per
        episode, naming the job, and once more when it is free again. Deadlines
        themselves are enforced by the loop, which alone can cancel, against
        when each coroutine really ended."""
        current, blocked = self._on_loop.current, self._blocked
        if blocked is not None and current is not blocked:
            self._blocked = None
            safe_log(
                log.warning,
                "the event loop runs again: job %s (%s) held it for %.1f s",
                blocked[0].id,
                blocked[0].func_name,
                now - blocked[1],
            )
        if current is None:
            return now + self.blocked_warn_secs
        job, since = current
        if self._blocked is None and now - since >= self.blocked_warn_secs:
            self._blocked = current
            self.blocked_total += 1
            safe_log(
                log.warning,
                "job %s (%s) has blocked the event loop for %.1f s: async tasks must not call blocking code "
                "(time.sleep, blocking I/O; await instead, or use executor='thread'); no other async job "
                "runs or times out meanwhile",
                job.id,
                job.func_name,
                now - since,
                extra={"job_id": job.id, "task": job.func_name},
            )
        return since + self.blocked_warn_secs if self._blocked is None else now + 0.1

    def begin_stop(self) -> None:
        """Start no new job: the ones still waiting for a slot go back to the queue."""
        self._stopping = True
        if self._sem is not None and self._loop is not None:
            # Waiters on the semaphore wake only when a slot frees; wake them all
            # now so they hand their jobs back at once.
            self._loop.call_soon_threadsafe(self._release_waiters)

    def wait(self, deadline: float) -> bool:
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
            self._waiting.pop(job.id, None)
            self._done()
            raise
        try:
            if self._stopping:
                self._waiting.pop(job.id, None)
                job.mark_handed_back()
                self._settle(lambda: self.writer.requeue([job]))
                return
            await self._attempt(job)
        finally:
            sem.release()

    async def _attempt(self, job: Job) -> None:
        runner = self.runner
        self._waiting.pop(job.id, None)
        task = runner.prepare(job)
        if task is None:
            self._done()
            return
        marked = self.writer.start_mark_async(job)
        if marked is not None and not await marked:
            runner.claim_lost(job)
            self._done()
            return
        attempt = runner.start(job, task, "async")
        timeout = _fate.timeout_of(job, self.default_timeout)
        policy = _fate.timeout_policy_of(job, self.default_policy)
        deadline = time.monotonic() + timeout
        args, kwargs = runner.inputs_of(job)
        # A task copies the current context when created: current_job() and the
        # run's span are its own inside it.
        token = _context.enter(runner.context_of(job))
        try:
            tracked = _Tracked(task.fn(*args, **kwargs), job, self._on_loop)
            with _tracing.using(runner.span_of(job)):
                future: asyncio.Future[Any] = asyncio.ensure_future(tracked)
        except BaseException as exc:  # the call itself raised (bad arguments)
            raised = exc
            self._settle(lambda: runner.settle(job, task, attempt, False, raised))
            return
        finally:
            _context.leave(token)
        entry = _Running(job, task, attempt, future, tracked)
        self._running[job.id] = entry
        timed_out = False
        try:
            done, _ = await asyncio.wait({future}, timeout=timeout)
            if not entry.interrupted:
                # Its own end, not when the loop got round to noticing it: a loop
                # held by another job must not turn a late coroutine into a success.
                ended = tracked.ended_at
                late = (ended if ended is not None else time.monotonic()) > deadline
                if late and policy == "ignore":
                    log.warning(
                        "job %s (%s) exceeded %.1f s; timeout_policy=ignore lets it run on",
                        job.id,
                        job.func_name,
                        timeout,
                    )
                    if not done:
                        await asyncio.wait({future})
                elif late:
                    timed_out = True
                    if not done:
                        future.cancel()
                        await asyncio.wait({future}, timeout=CANCEL_GRACE_SECS)
        finally:
            del self._running[job.id]
        if entry.interrupted:
            if not future.done():
                future.cancel()
            job.mark_interrupted()
            self._settle(lambda: self.writer.requeue([job]))
            return
        if timed_out:
            # The runner logs the attempt's end (a retry or the final failure): one line.
            attempt.finished_at = time.time()
            expired = _fate.timeout_error(timeout, "; its coroutine was cancelled")
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
