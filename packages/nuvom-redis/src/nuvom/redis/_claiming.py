"""Claiming, on the Redis queue (:class:`nuvom.redis.RedisJobQueue`): the claim
script for the queues a worker serves, and the wait between claims on their
wake-up lists (``BLPOP``) with the claim pipelined behind it.

Enqueues, hand-backs and released workflow jobs push to their queue's wake-up
list; a worker blocks on the lists of the queues it serves, so that a job
queued on any host is claimed one round trip after it is queued.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from nuvom.errors import BackendError, SerializationError
from nuvom.job import DEFAULT_QUEUE, Job, JobError, JobStatus
from nuvom.redis._connection import evalsha, is_transient, pack

from redis.exceptions import NoScriptError

if TYPE_CHECKING:
    from nuvom.redis._connection import Connection

__all__ = ["RedisClaims"]

log = logging.getLogger("nuvom.redis")

# Longest a pop_batch blocks on the wake-up list before claiming again: bounds
# how late a lease that ran out (nobody pushes a wake-up for it) is noticed.
_MAX_BLOCK = 1.0
# Expired leases moved back per claim: a dead worker's batch is recovered in one
# step without one claim walking a very long list.
_RECLAIM_PER_CLAIM = 1000
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0
# How late an idle server may end a BLPOP (its cron period at the default hz 10),
# and how often the last stretch before a due time is polled instead.
_SERVER_TICK = 0.11
_POLL = 0.005
# Claim times kept by token, for _FRESH_CLAIM (older ones just get a full renewal).
_CLAIM_TIMES_MAX = 256

_DEFAULT = (DEFAULT_QUEUE,)


def _NO_START() -> int:
    return 0


class RedisClaims:
    """Mixed into :class:`~nuvom.redis.RedisJobQueue` ahead of
    :class:`~nuvom.plugins.contracts.BaseJobQueue` (needs its connection, its
    claim script and its table of the claims it holds)."""

    conn: Connection
    prefix: str
    claimer: str
    _claim: Any
    _lease_rule: list[str]
    # job id -> claim token of the claims this object holds; token -> when
    # (monotonic) its claim's lease began, at the latest.
    _claims: dict[str, bytes]
    _claims_lock: threading.Lock
    _claimed_at: dict[bytes, float]
    # Whether this object's last claim took every ready job, and when (monotonic)
    # that claim said something may be due next: pop_batch then waits first.
    _drained: bool
    _due_at: float | None

    if TYPE_CHECKING:

        def key(self, name: str, queue: str = DEFAULT_QUEUE) -> str: ...

        def _quarantine(self, jobs: Sequence[Job]) -> None: ...

        def _started_first(self, marked: list[Job], rest: list[Job], start: int) -> list[Job]: ...

    def claim(self, batch_size: int) -> list[Job]:
        return self.conn.run("claiming jobs", lambda: self._claim_once(batch_size, _DEFAULT)[0])

    def _claim_args(self, batch_size: int, start: int, queues: Sequence[str]) -> list[Any]:
        return [self.prefix, batch_size, _RECLAIM_PER_CLAIM, *self._lease_rule, start, *queues]

    def _claim_once(self, batch_size: int, queues: Sequence[str], start: int = 0) -> tuple[list[Job], float | None]:
        """Claimed jobs (the first ``start`` start-marked), and (when fewer than
        ``batch_size``) seconds until something may be due."""
        sent = time.monotonic()  # the server's claim (and its lease) comes after this
        reply = evalsha(self.conn.own(), self._claim, self._claim_args(batch_size, start, queues))
        return self._claimed(reply, sent, start)

    def _wait_and_claim(
        self, batch_size: int, block: float, start: int, queues: Sequence[str]
    ) -> tuple[list[Job], float | None]:
        """Block on the wake-up list, then claim: both sent at once, so a job queued
        while this waits is claimed one network trip after its enqueue, not two.
        Redis runs a blocked client's next pipelined command as soon as it unblocks."""
        conn: Any = self.conn.own().connection  # redis-py's Connection is untyped
        commands = [
            ("BLPOP", *[self.key("wake", queue) for queue in queues], block),
            ("EVALSHA", self._claim.sha, 0, *self._claim_args(batch_size, start, queues)),
        ]
        try:
            conn.send_packed_command(pack(conn, commands))
            conn.read_response()
            # The claim ran as BLPOP returned, before its reply arrived here: its
            # lease began at most one trip from the server before this.
            sent = time.monotonic()
            reply = conn.read_response()
        except NoScriptError:  # a restarted server without the script: load it, claim again
            return self._claim_once(batch_size, queues, start)
        except BaseException:
            conn.disconnect()  # a reply may still be on its way: this connection is out of step
            raise
        return self._claimed(reply, sent, start)

    def _claimed(self, reply: list[Any], sent: float, start: int = 0) -> tuple[list[Job], float | None]:
        wait = reply[1]
        due_in = float(wait) if wait else None
        if reply[0] == 0:
            return [], due_in
        token = str(reply[0]).encode()
        marked: list[Job] = []  # among the first `start` claimed: start-marked by the script
        jobs: list[Job] = []
        unreadable: list[Job] = []
        for i in range(2, len(reply), 3):
            job_id, attempts, payload = reply[i].decode(), int(reply[i + 1]), reply[i + 2]
            try:
                job = Job.from_bytes(payload)
            except SerializationError as exc:
                unreadable.append(_unreadable(job_id, attempts, exc, self.claimer))
                continue
            # The script counted the claim (undone if it expires unstarted); so does mark_claimed.
            job.attempts = attempts - 1
            job.mark_claimed()
            (marked if (i - 2) // 3 < start else jobs).append(job)
        with self._claims_lock:
            claimed_at = self._claimed_at
            claimed_at[token] = sent
            if len(claimed_at) > _CLAIM_TIMES_MAX:
                for old in list(claimed_at)[: _CLAIM_TIMES_MAX // 2]:
                    del claimed_at[old]
            claims = self._claims
            for job in (*marked, *jobs, *unreadable):
                claims[job.id] = token
        if unreadable:
            for job in unreadable:
                log.error("job %s: %s", job.id, job.error.message if job.error else "")
            self._quarantine(unreadable)
        # A corrupt payload among the marked ones: others are marked in its place, so
        # that the first min(start, len(jobs)) returned are marked (pop_batch_starting).
        return self._started_first(marked, jobs, start), due_in

    def pop_batch_starting(self, batch_size: int, timeout: float | None = 0.0, *, start: int = 0) -> list[Job]:
        """:meth:`pop_batch` whose claim script also writes the start marks of the
        first ``start`` jobs it claims (the claim's lease already runs from now):
        no START round trip for the jobs an idle worker thread runs at once."""
        return self._pop(batch_size, timeout, lambda: max(0, start), _DEFAULT)

    def claim_batch(
        self,
        limit: int,
        timeout: float | None,
        idle: Callable[[], int],
        queues: Sequence[str] = (DEFAULT_QUEUE,),
    ) -> list[Job]:
        """:meth:`pop_batch_starting` for the ``queues`` served (the first one's
        jobs first), asking ``idle()`` as each claim script is sent (a claim
        pipelined behind a wait is sent before the wait)."""
        return self._pop(limit, timeout, idle, queues)

    def pop_batch(self, batch_size: int, timeout: float | None = 0.0) -> list[Job]:
        """Claim up to ``batch_size`` due jobs, waiting up to ``timeout`` s.

        Between claims the caller blocks on ``<prefix>:q:wake`` (BLPOP), which
        every enqueue and hand-back pushes to, with the claim pipelined behind
        it: a job queued on any host is claimed one round trip after it is
        queued. When this object's last claim took every due job, the wait comes
        first (an enqueue since then has left a wake-up), saving a claim that
        would find nothing. The block never outlasts the next due time or lease
        expiry the last claim reported. While the server is unreachable this
        returns ``[]`` after backing off (the connection logs one line when it
        goes and one when it is back): the worker keeps running what it holds.
        """
        return self._pop(batch_size, timeout, _NO_START, _DEFAULT)

    def _pop(self, batch_size: int, timeout: float | None, idle: Callable[[], int], queues: Sequence[str]) -> list[Job]:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = _BACKOFF_FIRST
        wait_first = self._drained and timeout != 0
        stale_retried = False
        while True:
            try:
                start = idle()
                if wait_first:
                    jobs, due_in = self._wait_then_claim(batch_size, deadline, start, queues)
                else:
                    jobs, due_in = self._claim_once(batch_size, queues, start)
                self.conn.mark_up()
                now = time.monotonic()
                self._drained = len(jobs) < batch_size
                self._due_at = None if due_in is None else now + due_in
                if jobs or timeout == 0:
                    return jobs
                if deadline is not None and now >= deadline:
                    return []
                wait_first = True
                pause = _BACKOFF_FIRST
            except BackendError:
                raise
            except Exception as exc:
                if not is_transient(exc):
                    raise BackendError(
                        f"Redis at {self.conn.safe_url} failed while claiming jobs: {type(exc).__name__}: {exc}"
                    ) from None
                wait_first = False
                if self.conn.stale(stale_retried):
                    stale_retried = True
                    continue
                self.conn.mark_down(exc, "claiming jobs")
                sleep = pause if deadline is None else min(pause, max(0.0, deadline - time.monotonic()))
                time.sleep(sleep)
                pause = min(pause * 2, _BACKOFF_MAX)
                if deadline is not None and time.monotonic() >= deadline:
                    return []

    def _wait_then_claim(
        self, batch_size: int, deadline: float | None, start: int, queues: Sequence[str]
    ) -> tuple[list[Job], float | None]:
        now = time.monotonic()
        # An idle server notices blocking timeouts on its cron tick (10 per second
        # by default), so BLPOP may return up to ~100 ms late: it waits until
        # shortly before the next due time, and the last stretch is polled.
        due_at = self._due_at
        block = _MAX_BLOCK if due_at is None else due_at - now - _SERVER_TICK
        if deadline is not None:
            block = min(block, deadline - now)
        if block < 0.01:
            nap = _POLL if due_at is None else min(_POLL, max(0.0, due_at - now))
            if deadline is not None:
                nap = min(nap, max(0.0, deadline - now))
            time.sleep(max(0.001, nap))
            return self._claim_once(batch_size, queues, start)
        return self._wait_and_claim(batch_size, block, start, queues)


def _unreadable(job_id: str, attempts: int, exc: Exception, worker: str) -> Job:
    now = time.time()
    return Job(
        id=job_id,
        func_name="<unreadable>",
        status=JobStatus.FAILED,
        attempts=attempts,
        created_at=now,
        finished_at=now,
        worker_id=worker,
        error=JobError(
            type="SerializationError",
            message=f"the job's stored payload in the queue is corrupt and it was not run ({exc})",
        ),
    )
