"""Worker threads: jobs run in a pool of slots fed from one shared line.

* The claim loop appends claimed jobs to the line and wakes idle slots; a
  slot takes the next job when it is done with one, so no job waits behind a
  long-running one while another slot is free.
* A slot hands its outcome to the outcome writer without waking it, then
  asks for the next job's start mark: both go in one group write, which the
  slot waits for before the next job runs.
* A Python thread cannot be killed. When a job runs past its deadline, the
  watchdog (:meth:`ThreadSlots.check`) records the timeout, abandons the
  slot's thread (whatever it returns later is discarded) and starts a fresh
  one in its place, so the pool keeps its size.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from nuvom import _fate
from nuvom._engine import safe_log
from nuvom._engine.outcomes import OutcomeWriter
from nuvom._engine.wake import Wake
from nuvom._runner import JobRunner
from nuvom._settings import Settings
from nuvom.job import Job, JobStatus

__all__ = ["ThreadSlots"]

log = logging.getLogger("nuvom.worker")


class _Slot:
    """One worker thread and what it runs."""

    __slots__ = (
        "abandoned",
        "attempt",
        "deadline",
        "ended",
        "index",
        "job",
        "last",
        "lock",
        "task",
        "thread",
        "timed_out",
        "wake",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.wake = Wake()
        self.lock = threading.Lock()
        self.job: Job | None = None
        self.task: Any = None
        self.attempt: Any = None
        self.deadline: float | None = None
        self.timed_out = False  # warned already (policy "ignore")
        self.thread: threading.Thread | None = None
        self.abandoned = False
        # The last run's job and when it ended (monotonic): a task that held the
        # GIL has often ended by the time the starved watchdog can name it.
        self.last: Job | None = None
        self.ended = 0.0


class ThreadSlots:
    """``threads`` worker threads running jobs; holds at most ``prefetch``
    claimed jobs waiting beyond those running."""

    kind: ClassVar[Literal["thread"]] = "thread"

    def __init__(
        self,
        *,
        threads: int,
        prefetch: int,
        runner: JobRunner,
        writer: OutcomeWriter,
        settings: Settings,
        on_free: Callable[[], None],
    ) -> None:
        self.threads = threads
        self.capacity = threads + prefetch
        self.runner = runner
        self.writer = writer
        self.default_timeout = settings.job_timeout_secs
        self.default_policy = settings.timeout_policy
        self._on_free = on_free
        self._ready: deque[Job] = deque()
        self._idle: list[_Slot] = []
        self._idle_lock = threading.Lock()
        self._slots: dict[int, _Slot] = {}
        self._stopping = False

    # -- the engine's side -------------------------------------------------------
    @property
    def slots(self) -> int:
        return self.threads

    def start(self) -> None:
        for i in range(self.threads):
            self._spawn(_Slot(i))

    def room(self) -> int:
        return self.capacity - len(self._ready) - self.inflight()

    def hungry(self) -> bool:
        return len(self._ready) < self.threads

    def idle(self) -> int:
        # Slots woken for the jobs in the line have left the idle list already.
        return len(self._idle)

    def inflight(self) -> int:
        return sum(1 for s in list(self._slots.values()) if s.job is not None and not s.abandoned)

    def workers(self) -> int:
        """Live threads that can run a job (abandoned ones do not count)."""
        return sum(
            1 for s in list(self._slots.values()) if not s.abandoned and s.thread is not None and s.thread.is_alive()
        )

    def submit(self, jobs: list[Job]) -> None:
        self._ready.extend(jobs)
        with self._idle_lock:
            idle = self._idle
            woken = idle[-len(jobs) :]
            del idle[-len(jobs) :]
        for slot in woken:
            slot.wake.set()

    def held_ids(self) -> list[str]:
        return [job.id for job in list(self._ready)] + [job.id for job in self.running()]

    def running(self, since: float | None = None) -> list[Job]:
        slots = [s for s in list(self._slots.values()) if not s.abandoned]
        jobs = [s.job for s in slots if s.job is not None]
        if since is not None:
            jobs += [s.last for s in slots if s.last is not None and s.ended >= since and s.last not in jobs]
        return jobs

    def cancel(self, job_id: str) -> None:
        """Nothing to interrupt: a thread cannot be stopped. The job's context
        says ``cancelled`` (the runner's), and it ends ``Cancelled``."""

    def check(self, now: float) -> float:
        next_check = float("inf")
        for slot in list(self._slots.values()):
            deadline = slot.deadline
            if deadline is None or slot.abandoned:
                continue
            if deadline <= now:
                self._expire(slot)
            else:
                next_check = min(next_check, deadline)
        return next_check

    def begin_stop(self) -> None:
        self._stopping = True
        # Claimed but not started: back to the queue with the claim's attempt undone.
        unstarted: list[Job] = []
        while True:
            try:
                job = self._ready.popleft()
            except IndexError:
                break
            job.mark_handed_back()
            unstarted.append(job)
        if unstarted:
            self.writer.requeue(unstarted)
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for slot in idle:
            slot.wake.set()

    def wait(self, deadline: float) -> bool:
        for slot in list(self._slots.values()):
            thread = slot.thread
            # An abandoned thread (timed out) is not waited for.
            while thread is not None and thread.is_alive() and not slot.abandoned and time.monotonic() < deadline:
                thread.join(min(0.05, max(0.0, deadline - time.monotonic())))
        return not any(s.job is not None and not s.abandoned for s in list(self._slots.values()))

    def interrupt(self) -> int:
        # Still running after the grace period: the attempt counts, and the job
        # goes back so that another worker runs it again.
        stuck: list[Job] = []
        for slot in list(self._slots.values()):
            with slot.lock:
                if slot.job is not None and not slot.abandoned:
                    slot.abandoned = True
                    slot.job.mark_interrupted()
                    stuck.append(slot.job)
        if stuck:
            self.writer.requeue(stuck)
        return len(stuck)

    def close(self) -> None:
        pass

    # -- the threads -------------------------------------------------------------
    def _spawn(self, slot: _Slot) -> None:
        thread = threading.Thread(target=self._work, args=(slot,), name=f"nuvom-worker-{slot.index}", daemon=True)
        slot.thread = thread
        self._slots[slot.index] = slot
        thread.start()

    def _work(self, slot: _Slot) -> None:
        ready, idle, idle_lock, writer = self._ready, self._idle, self._idle_lock, self.writer
        while True:
            try:
                job = ready.popleft()
            except IndexError:
                writer.kick()  # this slot's last outcome is written while it waits
                if slot.abandoned or self._stopping:
                    return
                with idle_lock:
                    # Looked at again under the lock: a job appended after the
                    # look above finds this slot idle, and wakes it.
                    if ready:
                        continue
                    idle.append(slot)
                slot.wake.wait()
                continue
            slot.job = job
            try:
                if not self._run(slot, job):
                    return  # the watchdog settled this job and replaced this thread
            except BaseException as exc:
                # Not the task (call() catches what it raises): a hook or a log
                # handler raised. The job fails, the thread lives.
                if not self._crashed(slot, job, exc):
                    return
            self._on_free()

    def _run(self, slot: _Slot, job: Job) -> bool:
        """One job in this thread; ``False`` if the thread was abandoned meanwhile."""
        runner = self.runner
        task = runner.prepare(job)
        if task is None:
            self.writer.kick()
            slot.job = None
            return True
        if not self.writer.start_mark(job):
            runner.claim_lost(job)
            slot.job = None
            return True
        attempt = runner.start(job, task)
        slot.task, slot.attempt = task, attempt
        slot.deadline = time.monotonic() + _fate.timeout_of(job, self.default_timeout)
        ok, value = runner.call(job, task)
        with slot.lock:
            if slot.abandoned:
                return False
            slot.last, slot.ended = job, time.monotonic()
            slot.job = slot.task = slot.attempt = slot.deadline = None
            slot.timed_out = False
        runner.settle(job, task, attempt, ok, value)
        return True

    def _crashed(self, slot: _Slot, job: Job, exc: BaseException) -> bool:
        """Settle a job whose handling raised outside the task; ``False`` if the
        thread was abandoned meanwhile."""
        with slot.lock:
            if slot.abandoned:
                return False
            slot.job = slot.task = slot.attempt = slot.deadline = None
            slot.timed_out = False
        safe_log(log.error, "job %s (%s): handling it raised %s: %s", job.id, job.func_name, type(exc).__name__, exc)
        # A job already handed on (stored or waiting to be, or back in the queue
        # for a retry) is left alone; any other is recorded now, as it stands if
        # its fate was decided, else failed with what happened.
        if job.id in self.writer.unstored or job.status is JobStatus.RETRYING:
            return True
        try:
            if not job.done:
                error = _fate.error_of(exc)
                error.message = f"the worker could not run this job: {type(exc).__name__}: {error.message}"
                job.mark_failed(error, time.time(), self.runner.worker_id)
            self.writer.finished(job)
        except BaseException:
            safe_log(log.exception, "job %s: recording its failure failed", job.id)
        return True

    def _expire(self, slot: _Slot) -> None:
        with slot.lock:
            job, task, attempt = slot.job, slot.task, slot.attempt
            if job is None or slot.deadline is None or slot.abandoned:
                return
            timeout = _fate.timeout_of(job, self.default_timeout)
            policy = _fate.timeout_policy_of(job, self.default_policy)
            if policy == "ignore":
                if not slot.timed_out:
                    slot.timed_out = True
                    log.warning(
                        "job %s (%s) exceeded %.1f s; timeout_policy=ignore lets it run on",
                        job.id,
                        job.func_name,
                        timeout,
                    )
                slot.deadline = None
                return
            slot.abandoned = True
        # The runner logs the attempt's end (a retry or the final failure): one line.
        self._spawn(_Slot(slot.index))
        expired = _fate.timeout_error(timeout, "; its thread was abandoned and replaced")
        self.runner.fail_attempt(job, task, attempt, expired, timed_out=True)
        self.writer.kick()
