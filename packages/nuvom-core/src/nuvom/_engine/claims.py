"""The claim loop: one claim step per worker process, for the room it has.

Each step claims as many due jobs as the executors have room for (free slots
plus a bounded prefetch, minus finished jobs whose outcomes are not written
yet: they still hold claims), up to ``NUVOM_BATCH_SIZE``, in one call of the
queue (one transaction, script or directory pass). Jobs for slots idle at
that moment are start-marked by the claim itself (``pop_batch_starting``):
they run at once and cost no write of their own. With no room it waits to be
told of some; with no due job it waits in the queue, which wakes it (memory),
or polls it (files, SQLite), or blocks on it (Redis).

While the loop waits for room, the outcome writer makes the claim itself,
right after the group whose outcomes freed the room (:meth:`ClaimLoop.claim_now`):
this thread would otherwise wake and claim while the writer writes the next
group, and the two take the GIL from each other at every statement (a SQLite
drain ran 5 % faster, with 5 % less CPU a job, once the writer claimed).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from nuvom._engine import safe_log
from nuvom._engine.executors import Executors
from nuvom._engine.outcomes import OutcomeWriter
from nuvom.job import DEFAULT_QUEUE, Job
from nuvom.plugins.contracts import BaseJobQueue

__all__ = ["ClaimLoop"]

log = logging.getLogger("nuvom.worker")

# How long one wait (for room, or in the queue for a due job) lasts before the
# loop looks again whether it must stop.
_WAIT = 0.2
# With nothing due, how often the loop looks at the claims other workers hold.
_HELD_EVERY = 5.0


class ClaimLoop:
    def __init__(
        self,
        queue: BaseJobQueue,
        executors: Executors,
        writer: OutcomeWriter,
        *,
        batch_size: int,
        capacity: int,
        queues: Sequence[str] = (DEFAULT_QUEUE,),
    ) -> None:
        self.queue = queue
        self.queues = list(queues)
        self.executors = executors
        self.writer = writer
        self.batch_size = batch_size
        self.capacity = capacity
        # Claims come in batches of at least this many while every executor still
        # has work lined up: a claim per freed slot would cost a transaction per job.
        self._min_claim = max(1, batch_size // 2)
        self._room = threading.Condition()
        # Set while the loop waits for room: only then must freeing some notify it.
        self._waiting = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._held_seen = 0  # claims of other workers last reported
        self._held_next = 0.0
        # Held while a claim is made and its jobs handed on, by this loop or by
        # the writer (claim_now): one claim at a time, each counting the room
        # the one before left.
        self._claiming = threading.Lock()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nuvom-claims", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Claim nothing more; returns once the loop has ended."""
        self._stopping.set()
        with self._room:
            self._room.notify_all()
        if self._thread is not None:
            self._thread.join()
        with self._claiming:
            pass  # a claim of the writer's in flight has handed its jobs on, or back

    def notify(self) -> None:
        """Room may have freed up (a job ended, outcomes were written)."""
        if self._waiting and self._worth_claiming(self.room()):
            with self._room:
                self._room.notify()

    def _worth_claiming(self, room: int) -> bool:
        return room >= self._min_claim or (room > 0 and self.executors.hungry())

    def room(self) -> int:
        writer = self.writer
        held = len(writer.unstored)
        if writer.failing and held >= self.capacity:
            return 0  # keeping as many outcomes as it may: claim nothing until they are written
        return self.executors.room() - held

    def claim_now(self) -> None:
        """The outcome writer's claim, after a group it stored: made only while
        this loop waits for room and is worth it then, without waiting in the
        queue. Errors are left to the loop's own claims, which report them."""
        if not self._waiting or not self._claiming.acquire(blocking=False):
            return
        try:
            room = self.room()
            if self._stopping.is_set() or not self._worth_claiming(room):
                return
            try:
                jobs, started = self._claim(min(self.batch_size, room), 0.0)
            except Exception:
                return
            self._hand_on(jobs, started)
        finally:
            self._claiming.release()

    def _run(self) -> None:
        stopping = self._stopping
        failing: str | None = None  # the claim error being reported, logged once
        while not stopping.is_set():
            with self._room:
                # Set before room is counted: whoever frees room after the count
                # sees the flag and notifies (they skip the Condition otherwise).
                self._waiting = True
                room = self.room()
                if not self._worth_claiming(room):
                    self._room.wait(_WAIT)
                    continue
                self._waiting = False
            with self._claiming:
                room = self.room()  # less if the writer claimed meanwhile
                if room <= 0:
                    continue
                try:
                    jobs, started = self._claim(min(self.batch_size, room), _WAIT)
                except Exception as exc:
                    error: Exception | None = exc
                else:
                    error = None
                    if jobs:
                        self._hand_on(jobs, started)
            if error is not None:
                # One line per change of state, not one a second: a store that is
                # read-only or corrupt says so once, and once more when it recovers.
                if str(error) != failing:
                    failing = str(error)
                    safe_log(
                        log.error,
                        "claiming jobs failed (%s: %s); trying again every second",
                        type(error).__name__,
                        error,
                    )
                stopping.wait(1.0)
                continue
            if failing is not None:
                failing = None
                safe_log(log.warning, "claiming jobs works again")
            if not jobs:
                self._report_held()

    def _hand_on(self, jobs: list[Job], started: int) -> None:
        """Claimed jobs to their executors (the first ``started`` start-marked by
        the claim), or back to the queue if the worker stops."""
        if self._stopping.is_set():
            self._hand_back(jobs)
            return
        if started:
            self.writer.premarked.update(job.id for job in jobs[:started])
        self.executors.route(jobs)

    def _claim(self, want: int, timeout: float) -> tuple[list[Job], int]:
        """Up to ``want`` jobs (waiting up to ``timeout`` s for one), and how
        many of the first ones the claim start-marked."""
        executors, keeps_marks = self.executors, self.writer.keeps_marks
        asked = 0

        def idle() -> int:
            nonlocal asked
            asked = min(executors.idle(), want) if keeps_marks else 0
            return asked

        jobs = self.queue.claim_batch(want, timeout, idle, self.queues)
        return jobs, min(asked, len(jobs))

    def _report_held(self) -> None:
        """Nothing due: say (once per change) how many jobs other workers hold,
        and until when: a worker restarted after a crash waits out the dead
        worker's leases, and an operator should know that it does."""
        now = time.monotonic()
        if now < self._held_next:
            return
        self._held_next = now + _HELD_EVERY
        try:
            held, last_end = self.queue.claims_held()
        except Exception:
            return  # the claims' own errors are reported by the claim loop
        mine = len(self.executors.held_ids()) + len(self.writer.held_ids())
        others = max(0, held - mine)
        if others == self._held_seen:
            return
        self._held_seen = others
        if others:
            until = "" if last_end is None else f"; the last lease ends in {max(0.0, last_end - time.time()):.0f} s"
            safe_log(
                log.info,
                "nothing due here: %d job(s) are claimed by other workers%s (running there; or held by a "
                "worker that died, then run here once the lease ends)",
                others,
                until,
            )

    def _hand_back(self, jobs: list[Job]) -> None:
        for job in jobs:
            job.mark_handed_back()
        self.writer.requeue(jobs)
