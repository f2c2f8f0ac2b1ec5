"""The outcome writer: what a worker writes after a claim, in groups.

Executors hand it finished jobs, retries, hand-backs and start marks; one
writer thread writes everything pending with one ``queue.settle()`` call (one
transaction on SQLite, one round trip on Redis), starts the next call as soon
as the last returns, and so groups whatever arrived meanwhile: a busy worker
writes many jobs per call, an idle one each job at once.

Start marks (see ``BaseJobQueue`` in :mod:`nuvom.plugins.contracts`): a job
claimed with its mark runs at once; any other waits for its mark, which goes
in the next group together with the outcome its slot has just produced, so a
busy slot pays one shared write per job, not a write of its own.

If writing fails (a full disk, a store restarting), finished jobs stay here
with their claims held and renewed, no more jobs are claimed beyond the
worker's capacity, and the group is written again after a backoff: a job is
never run again because its outcome could not be written.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence

from nuvom._engine import safe_log
from nuvom._engine.wake import Wake
from nuvom.errors import SerializationError
from nuvom.job import Job, JobError, JobStatus
from nuvom.plugins.contracts import BaseJobQueue, BaseResultBackend

__all__ = ["OutcomeWriter"]

log = logging.getLogger("nuvom.worker")

# A failed write is tried again after this, doubling up to the maximum.
_RETRY_FIRST = 0.2
_RETRY_MAX = 5.0
# Longest a group waits for the start marks of slots still running a job: a
# group per slot would cost a transaction per job; this bounds what a group
# waits when a slot runs a long job.
_GATHER_SECS = 0.0002


class _Mark:
    """A start mark waiting to be written; ``done(result)`` is called once it was."""

    __slots__ = ("done", "job", "result")

    def __init__(self, job: Job, done: Callable[[bool], None]) -> None:
        self.job, self.done = job, done
        self.result = True


class OutcomeWriter:
    """Writes a worker's outcomes, retries, hand-backs and start marks in groups.

    ``on_stored()`` is called after each group written: finished jobs no
    longer hold the worker's capacity, so the claim loop may claim more.
    """

    def __init__(
        self,
        queue: BaseJobQueue,
        results: BaseResultBackend,
        *,
        capacity: int,
        on_stored: Callable[[], None],
    ) -> None:
        self.queue, self.results = queue, results
        self.capacity = capacity
        self._on_stored = on_stored
        #: Called after each group stored, before ``on_stored``: the claim loop's
        #: ``claim_now`` (set by the worker).
        self.claim_now: Callable[[], None] | None = None
        #: How many start marks to expect soon: the slots running a job (set by the worker).
        self.expected: Callable[[], int] | None = None
        #: Whether the queue keeps start marks (a queue that does not is never asked for one).
        self.keeps_marks = type(queue).mark_started is not BaseJobQueue.mark_started
        self._lock = threading.Lock()
        self._finished: list[Job] = []
        self._requeued: list[Job] = []
        self._marks: list[_Mark] = []
        #: Finished jobs not yet stored: they hold claims, so they count against
        #: the worker's capacity and their leases are renewed.
        self.unstored: dict[str, Job] = {}
        #: Ids of jobs start-marked with their claim (``pop_batch_starting``).
        self.premarked: set[str] = set()
        self._wake = Wake()
        self._sleeping = False
        self._gathering = False
        self._gather_target = 0
        self._closing = False
        self._abandoned = False
        self._failing = False
        self._backoff = _RETRY_FIRST
        self._thread: threading.Thread | None = None
        #: Jobs whose final outcome was stored, and how many of them failed (presence).
        self.jobs_done = self.jobs_failed = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nuvom-outcomes", daemon=True)
        self._thread.start()

    # -- the executors' side ---------------------------------------------------
    def finished(self, job: Job, *, kick: bool = True) -> None:
        """``job`` reached a terminal state: store it and release its claim.
        ``kick=False``: the caller calls :meth:`kick` (or waits for a start
        mark) soon, so that this outcome and what follows share one write."""
        if self.premarked:
            self.premarked.discard(job.id)
        with self._lock:
            self.unstored[job.id] = job
            self._finished.append(job)
            if kick:
                self._wake_locked()

    def requeue(self, jobs: Sequence[Job], *, kick: bool = True) -> None:
        """Put claimed jobs back as given (a retry with its not-before time, or a hand-back)."""
        if self.premarked:
            for job in jobs:
                self.premarked.discard(job.id)
        with self._lock:
            self._requeued.extend(jobs)
            if kick:
                self._wake_locked()

    def kick(self) -> None:
        """Write what was handed over with ``kick=False``."""
        with self._lock:
            self._wake_locked()

    def _wake_locked(self) -> None:
        if self._sleeping:
            self._sleeping = False
            self._wake.set()

    def start_mark(self, job: Job) -> bool:
        """Write ``job``'s start mark before it runs (with the next group, and
        wait for it; at once if it was marked with its claim, or the queue
        keeps no marks); ``False`` if its claim was taken over: it must not run."""
        if self.marked_already(job):
            if self._sleeping:
                self.kick()  # what this slot handed over quietly goes out now
            return True
        done = Wake()
        mark = _Mark(job, lambda ok: done.set())
        self._add_mark(mark)
        done.wait()
        return mark.result

    def start_mark_async(self, job: Job) -> asyncio.Future[bool] | None:
        """:meth:`start_mark` for the event loop: ``None`` when ``job`` needs no
        mark now, else a future of the running loop resolved with the mark's result."""
        if self.marked_already(job):
            if self._sleeping:
                self.kick()
            return None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()

        def done(ok: bool) -> None:
            loop.call_soon_threadsafe(_set_result, future, ok)

        self._add_mark(_Mark(job, done))
        return future

    def marked_already(self, job: Job) -> bool:
        """Whether ``job`` needs no mark now: marked with its claim, or no marks kept."""
        if not self.keeps_marks:
            return True
        premarked = self.premarked
        if premarked and job.id in premarked:
            premarked.discard(job.id)
            return True
        return False

    def _add_mark(self, mark: _Mark) -> None:
        with self._lock:
            self._marks.append(mark)
            if not self._gathering:
                self._wake_locked()
            elif len(self._marks) >= self._gather_target:
                self._wake.set()  # the last mark the group waits for

    def held_ids(self) -> list[str]:
        """Ids of the claims waiting here (outcomes and hand-backs not yet written):
        the watchdog renews their leases."""
        with self._lock:
            return [*self.unstored, *(job.id for job in self._requeued)]

    @property
    def failing(self) -> bool:
        return self._failing

    # -- the writer thread ---------------------------------------------------
    def _run(self) -> None:
        while not self._abandoned:
            with self._lock:
                idle = not (self._finished or self._requeued or self._marks)
                if idle:
                    if self._closing:
                        return
                    self._sleeping = True
            if idle:
                self._wake.wait()
                continue
            if self.expected is not None and self._marks:
                self._gather(self.expected)
            try:
                self._write_group()
            except BaseException:
                # A log handler that raises (EMFILE, say) must not end the writer.
                safe_log(log.exception, "writing outcomes failed unexpectedly; trying again")
                time.sleep(_RETRY_FIRST)
            if self._failing and not self._abandoned:
                self._wake.wait(self._backoff)  # set by close() to stop waiting

    def _gather(self, expected: Callable[[], int]) -> None:
        """Wait (briefly) until every slot running a job has asked for its next
        start mark, so that one group carries them all."""
        deadline = time.monotonic() + _GATHER_SECS
        with self._lock:
            target = self._gather_target = expected()
            if len(self._marks) >= target:
                return
            self._gathering = True
            self._wake.clear()
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not self._wake.wait(left):
                    return
                with self._lock:
                    if len(self._marks) >= target:
                        return
        finally:
            self._gathering = False

    def _write_group(self) -> None:
        with self._lock:
            finished, requeued, marks = self._finished, self._requeued, self._marks
            self._finished, self._requeued, self._marks = [], [], []
        starting = [m.job for m in marks]
        try:
            try:
                started = self.queue.settle(finished, requeued, starting, self.results)
            except SerializationError:
                started = self.queue.settle(_fail_unencodable(finished), requeued, starting, self.results)
        except Exception as exc:
            self._failed(exc, finished, requeued, marks)
            return
        _resolve(marks, started)
        if finished:
            with self._lock:
                for job in finished:
                    self.unstored.pop(job.id, None)
            self.jobs_done += len(finished)
            self.jobs_failed += sum(job.status is JobStatus.FAILED for job in finished)
        if self._failing:
            self._failing = False
            self._backoff = _RETRY_FIRST
            safe_log(log.warning, "storing finished jobs works again; %d job(s) stored", len(finished))
        if self.claim_now is not None:
            self.claim_now()
        self._on_stored()

    def _failed(self, exc: Exception, finished: list[Job], requeued: list[Job], marks: list[_Mark]) -> None:
        """A group could not be written: keep its outcomes and hand-backs, written
        again after a backoff. A job waiting for its start mark runs anyway, as
        on a queue without marks: its claim still holds it, and if this worker
        died now the claim would be handed back."""
        if marks:
            _resolve(marks, [True] * len(marks))
        with self._lock:
            self._finished[:0] = finished
            self._requeued[:0] = requeued
        if not self._failing:
            self._failing = True
            safe_log(
                log.error,
                "storing finished jobs failed (%s); keeping up to %d in memory and trying again; "
                "no new jobs are claimed beyond that, and jobs start without start marks meanwhile",
                exc,
                self.capacity,
            )
        else:
            self._backoff = min(_RETRY_MAX, self._backoff * 2)

    def close(self, deadline: float) -> int:
        """Write everything pending, trying until ``deadline`` (monotonic) if
        writing fails; returns how many finished jobs could not be stored."""
        self._closing = True
        self._wake.set()
        thread = self._thread
        while thread is not None and thread.is_alive() and time.monotonic() < deadline:
            thread.join(min(0.1, max(0.0, deadline - time.monotonic())))
            self._wake.set()  # cut a backoff short
        self._abandoned = True  # past the deadline: a store still failing gets no more tries
        self._wake.set()
        return len(self.unstored)


def _resolve(marks: Sequence[_Mark], results: Sequence[bool]) -> None:
    for mark, ok in zip(marks, results, strict=True):
        mark.result = ok
        mark.done(ok)


def _set_result(future: asyncio.Future[bool], ok: bool) -> None:
    if not future.done():
        future.set_result(ok)


def _fail_unencodable(batch: list[Job]) -> list[Job]:
    """The batch with every job whose outcome cannot be encoded failed with the
    reason (its result is dropped): stored once, never run again."""
    for job in batch:
        try:
            job.to_bytes()
        except SerializationError as exc:
            job.set_fields(result=None)
            job.mark_failed(
                JobError(type="SerializationError", message=f"the job's outcome could not be stored: {exc}"),
                time.time(),
            )
    return batch
