"""The job queue: payloads in hashes, a sorted set of due times, a sorted set
of lease expiries, and one Lua script per step (see ``_scripts``).

A waiting job sits in ``<prefix>:q:due`` scored by the (server) time it is
due; a claim moves it to ``<prefix>:q:leases`` scored by the lease's end and
gives it the claim's token. The claim script also moves jobs whose lease ran
out back to the due set, so a dead worker's jobs are found by the same step,
and delayed jobs become due without anyone polling them one by one.

Only a claim that started counts as an attempt: :meth:`RedisJobQueue.mark_started`
puts the job in ``<prefix>:q:started`` (fenced by its token), and the claim script
undoes the attempt of an expired claim that is not there.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from nuvom.errors import BackendError, SerializationError
from nuvom.job import DEFAULT_QUEUE, LEASE_FACTOR, LEASE_MARGIN_SECS, Job, JobError, JobStatus, lease_secs_for
from nuvom.plugins.contracts import BaseJobQueue, BaseResultBackend
from nuvom.redis import _scripts
from nuvom.redis._connection import Connection, acquire, is_transient, release
from nuvom.redis._results import RedisResultBackend, result_args
from nuvom.redis._schedules import RedisSchedules
from nuvom.redis._settings import RedisSettings, load_redis_settings
from nuvom.redis._workers import RedisPresence

from redis.exceptions import NoScriptError, ResponseError


def _hiredis_packer() -> Any:
    try:
        return importlib.import_module("hiredis").pack_command
    except (ImportError, AttributeError):  # the optional extra is not installed: redis-py packs
        return None


_pack_command = _hiredis_packer()

if TYPE_CHECKING:
    from nuvom.config import Settings

__all__ = ["RedisJobQueue"]

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
# A job started within a tenth of its lease (and at most a second) after its
# claim keeps the claim's lease, 90% of a full lease from the start or more
# (as the SQLite queue does): the start mark then writes only the mark.
_FRESH_CLAIM = 0.1
_FRESH_CLAIM_MAX_SECS = 1.0
# Claim times kept by token, for _FRESH_CLAIM (older ones just get a full renewal).
_CLAIM_TIMES_MAX = 256


class RedisJobQueue(RedisPresence, BaseJobQueue, RedisSchedules):
    """A durable queue in Redis, shared by every process on every host that uses
    the same URL and prefix. Safe across threads and processes. It keeps
    schedules too (``task.schedule(...)``, see ``_schedules``).

    ``redis`` overrides the ``NUVOM_REDIS_*`` settings (tests, embedding).
    """

    settings_class = RedisSettings

    shared_between_processes = True

    def __init__(self, settings: Settings | None = None, *, redis: RedisSettings | None = None) -> None:
        super().__init__(settings)
        if settings is None:
            from nuvom.config import get_settings

            settings = get_settings()
        self.settings = settings
        self.redis_settings = redis or load_redis_settings()
        self.prefix = self.redis_settings.redis_prefix
        self.conn: Connection = acquire(self.redis_settings)
        self.client = self.conn.client
        script = self.client.register_script
        self._enqueue = script(_scripts.ENQUEUE)
        self._claim = script(_scripts.CLAIM)
        self._ack = script(_scripts.ACK)
        self._requeue = script(_scripts.REQUEUE)
        self._extend = script(_scripts.EXTEND)
        self._clear = script(_scripts.CLEAR)
        self._complete = script(_scripts.COMPLETE)
        self._start = script(_scripts.START)
        self._init_schedules()
        self.lease_secs = float(settings.lease_secs)
        self.default_timeout = float(settings.job_timeout_secs)
        self.claimer = f"{socket.gethostname()}:{os.getpid()}"
        # job id -> claim token of the claims this object holds: a settlement
        # only applies while the job's token in Redis is still this one.
        self._claims: dict[str, bytes] = {}
        self._claims_lock = threading.Lock()
        # token -> when (monotonic) its claim's lease began, at the latest.
        self._claimed_at: dict[bytes, float] = {}
        self._lease_rule = self._lease_rule_args()
        self._wake_key = self.key("wake")
        # Whether this object's last claim took every due job, and when (monotonic)
        # that claim said something may be due next: pop_batch then waits first.
        self._drained = False
        self._due_at: float | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<RedisJobQueue {self.conn.safe_url} prefix={self.prefix!r}>"

    @property
    def url(self) -> str:
        return self.conn.url

    def key(self, name: str) -> str:
        return f"{self.prefix}:q:{name}"

    def _lease_rule_args(self) -> list[str]:
        """The claimer's arguments of :func:`nuvom.job.lease_secs_for`, which the
        scripts evaluate per job: a job's lease follows the settings of the worker
        that holds it, not those of the producer that queued it."""
        return [repr(self.lease_secs), repr(self.default_timeout), repr(LEASE_FACTOR), repr(LEASE_MARGIN_SECS)]

    # -- producing ------------------------------------------------------------
    def enqueue(self, job: Job) -> None:
        self.enqueue_many((job,))

    def enqueue_many(self, jobs: Sequence[Job]) -> None:
        """Queue every job in one script: all of them or (on any failure) none."""
        if not jobs:
            return
        now = time.time()
        args: list[Any] = [self.prefix]
        for job in jobs:
            # Offsets, not timestamps: the script adds them to the server's clock.
            args += [job.id, repr(job.due_at - now), job.to_bytes(), repr(job.timeout_secs or 0), job.attempts]
        tries = [0]

        def run() -> Any:
            tries[0] += 1
            return _evalsha(self.conn.own(), self._enqueue, args)

        dup = self.conn.run("queueing jobs", run)
        # A retry after a lost reply finds its own jobs already queued: that is success.
        if dup and tries[0] == 1:
            raise BackendError(
                f"Redis at {self.conn.safe_url}: job id(s) {', '.join(d.decode() for d in dup[:3])} already "
                f"queued under prefix {self.prefix!r}; job ids must be unique (the others were queued)"
            )

    # -- claiming -------------------------------------------------------------
    def claim(self, batch_size: int) -> list[Job]:
        return self.conn.run("claiming jobs", lambda: self._claim_once(batch_size)[0])

    def _claim_args(self, batch_size: int, start: int) -> list[Any]:
        return [self.prefix, batch_size, _RECLAIM_PER_CLAIM, *self._lease_rule, start]

    def _claim_once(self, batch_size: int, start: int = 0) -> tuple[list[Job], float | None]:
        """Claimed jobs (the first ``start`` start-marked), and (when fewer than
        ``batch_size``) seconds until something may be due."""
        sent = time.monotonic()  # the server's claim (and its lease) comes after this
        reply = _evalsha(self.conn.own(), self._claim, self._claim_args(batch_size, start))
        return self._claimed(reply, sent, start)

    def _wait_and_claim(self, batch_size: int, block: float, start: int) -> tuple[list[Job], float | None]:
        """Block on the wake-up list, then claim: both sent at once, so a job queued
        while this waits is claimed one network trip after its enqueue, not two.
        Redis runs a blocked client's next pipelined command as soon as it unblocks."""
        conn: Any = self.conn.own().connection  # redis-py's Connection is untyped
        commands = [
            ("BLPOP", self._wake_key, block),
            ("EVALSHA", self._claim.sha, 0, *self._claim_args(batch_size, start)),
        ]
        try:
            conn.send_packed_command(_pack(conn, commands))
            conn.read_response()
            # The claim ran as BLPOP returned, before its reply arrived here: its
            # lease began at most one trip from the server before this.
            sent = time.monotonic()
            reply = conn.read_response()
        except NoScriptError:  # a restarted server without the script: load it, claim again
            return self._claim_once(batch_size, start)
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
        return self._pop(batch_size, timeout, lambda: max(0, start))

    def claim_batch(
        self,
        limit: int,
        timeout: float | None,
        idle: Callable[[], int],
        queues: Sequence[str] = (DEFAULT_QUEUE,),
    ) -> list[Job]:
        """:meth:`pop_batch_starting`, asking ``idle()`` as each claim script is sent
        (a claim pipelined behind a wait is sent before the wait)."""
        return self._pop(limit, timeout, idle)

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
        return self._pop(batch_size, timeout, _NO_START)

    def _pop(self, batch_size: int, timeout: float | None, idle: Callable[[], int]) -> list[Job]:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = _BACKOFF_FIRST
        wait_first = self._drained and timeout != 0
        stale_retried = False
        while True:
            try:
                start = idle()
                if wait_first:
                    jobs, due_in = self._wait_then_claim(batch_size, deadline, start)
                else:
                    jobs, due_in = self._claim_once(batch_size, start)
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

    def _wait_then_claim(self, batch_size: int, deadline: float | None, start: int) -> tuple[list[Job], float | None]:
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
            return self._claim_once(batch_size, start)
        return self._wait_and_claim(batch_size, block, start)

    # -- settling claims ------------------------------------------------------
    def _tokens(self, job_ids: Sequence[str]) -> list[bytes]:
        with self._claims_lock:
            get = self._claims.get
            return [get(job_id, b"") for job_id in job_ids]

    def _forget(self, job_ids: Sequence[str], tokens: Sequence[bytes]) -> None:
        """Drop the claims settled with these tokens. A job handed back may be
        claimed again (here, under a new token) before this runs: that claim stays."""
        with self._claims_lock:
            claims = self._claims
            for job_id, token in zip(job_ids, tokens, strict=True):
                if claims.get(job_id, b"") == token:
                    claims.pop(job_id, None)

    def _worker_patience(self) -> float:
        return self.redis_settings.redis_worker_retry_secs

    def ack(self, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        args: list[Any] = [self.prefix]
        tokens = self._tokens(job_ids)
        for job_id, token in zip(job_ids, tokens, strict=True):
            args += [job_id, token]
        self.conn.run(
            "acknowledging jobs", lambda: self._ack(args=args, client=self.conn.own()), patience=self._worker_patience()
        )
        self._forget(job_ids, tokens)

    def requeue(self, jobs: Sequence[Job]) -> None:
        """Put jobs back as given, in one script. A job whose claim was taken
        over meanwhile is left to its new claimer; running this twice (a retry
        after a lost reply) hands nothing back twice, as the first run spent the token."""
        if not jobs:
            return
        ids = [job.id for job in jobs]
        tokens = self._tokens(ids)
        args = self._requeue_args(jobs, tokens)
        skipped = self.conn.run("handing jobs back", lambda: self._requeue(args=args), patience=self._worker_patience())
        self._forget(ids, tokens)
        _log_skipped(skipped)

    def _complete_args(self, jobs: Sequence[Job], tokens: Sequence[bytes], ttl_ms: int) -> list[Any]:
        args: list[Any] = [self.prefix, ttl_ms]
        for job, token in zip(jobs, tokens, strict=True):
            job_id, status, task, when, payload = result_args(job)
            args += [job_id, token, job.attempts, status, task, when, payload]
        return args

    def _quarantine(self, jobs: Sequence[Job]) -> None:
        """Store unreadable jobs as their failed records (COMPLETE, their claims' tokens)."""
        ttl = self.redis_settings.result_ttl_secs
        ids = [job.id for job in jobs]
        tokens = self._tokens(ids)
        args = self._complete_args(jobs, tokens, 0 if ttl is None else max(1, int(ttl * 1000)))
        self._run_scripts([(self._complete, args)], "quarantining unreadable jobs")
        self._forget(ids, tokens)

    def _requeue_args(self, jobs: Sequence[Job], tokens: Sequence[bytes]) -> list[Any]:
        now = time.time()
        args: list[Any] = [self.prefix]
        for job, token in zip(jobs, tokens, strict=True):
            args += [job.id, token, repr(job.due_at - now), job.to_bytes(), job.attempts, repr(job.timeout_secs or 0)]
        return args

    def complete(self, jobs: Sequence[Job], results: BaseResultBackend) -> None:
        """Store outcomes and remove the jobs from the queue.

        When ``results`` is a :class:`RedisResultBackend` on the same server and
        prefix, both happen in one script, and only for jobs whose claim is
        still the one they ran under: a completion whose claim was taken over
        (its lease ran out and another worker claimed the job) is dropped, and
        the other run records the outcome. Otherwise: store, then acknowledge.
        """
        self.settle(jobs, (), (), results)

    def settle(
        self,
        finished: Sequence[Job],
        requeued: Sequence[Job],
        starting: Sequence[Job],
        results: BaseResultBackend,
    ) -> list[bool]:
        """A worker's group write in one round trip (when the results share this
        server and prefix): COMPLETE for ``finished``, REQUEUE for ``requeued``
        and START for each of ``starting``, pipelined; each script is atomic
        and fenced by the claims' tokens, as :meth:`complete`, :meth:`requeue`
        and :meth:`mark_started` are. Running it twice (a retry after a lost
        reply) settles nothing twice: the first run spent the tokens."""
        if not self._shares_store(results):
            return self._settle_apart(finished, requeued, starting, results)
        assert isinstance(results, RedisResultBackend)
        commands: list[tuple[Any, list[Any]]] = []
        ids = [job.id for job in finished]
        tokens = self._tokens(ids)
        if finished:
            commands.append((self._complete, self._complete_args(finished, tokens, results.ttl_ms)))
        back_ids = [job.id for job in requeued]
        back_tokens = self._tokens(back_ids)
        if requeued:
            commands.append((self._requeue, self._requeue_args(requeued, back_tokens)))
        marks = [(job, self._start_args(job)) for job in starting]
        commands += [(self._start, args) for _, args in marks if args is not None]
        replies = self._run_scripts(commands, "settling jobs") if commands else []
        if finished:
            ignored = replies.pop(0)
            self._forget(ids, tokens)
            if ignored:
                log.info("%d completion(s) ignored: their claim was taken over by another worker", len(ignored))
            results.maybe_prune()
        if requeued:
            _log_skipped(replies.pop(0))
            self._forget(back_ids, back_tokens)
        # A job not claimed through this object has nothing to fence: it starts.
        return [True if args is None else self._started(job, args, replies.pop(0)) for job, args in marks]

    def _run_scripts(self, commands: list[tuple[Any, list[Any]]], what: str) -> list[Any]:
        """Scripts with their arguments, pipelined in one round trip on this
        thread's connection; their replies, in order."""

        def run() -> list[Any]:
            client = self.conn.own()
            if len(commands) == 1:
                script, args = commands[0]
                return [_evalsha(client, script, args)]
            # Plain EVALSHAs on this thread's connection: a redis-py pipeline of
            # registered scripts would first ask whether the server has them
            # (SCRIPT EXISTS, one more round trip) and check a pool connection out.
            replies = _pipelined(client, [("EVALSHA", script.sha, 0, *args) for script, args in commands])
            for k, reply in enumerate(replies):
                # A server without a script (restarted, flushed) ran nothing of it:
                # that script is sent again, loading it.
                if isinstance(reply, NoScriptError):
                    script, args = commands[k]
                    replies[k] = script(args=args, client=client)
                elif isinstance(reply, Exception):
                    raise reply
            return replies

        return self.conn.run(what, run, patience=self._worker_patience())

    def mark_started(self, job: Job) -> bool:
        """One script: the claim's start mark and a lease from now, fenced by the
        claim's token. Redis has it when this returns; with the append-only file
        (``appendfsync everysec``) a crash of the server may lose the last second."""
        args = self._start_args(job)
        if args is None:
            return True  # not claimed through this object: nothing to fence
        return self._started(job, args, self._run_scripts([(self._start, args)], "marking a job started")[0])

    def _started(self, job: Job, args: list[Any], reply: Any) -> bool:
        """What START (called with ``args``) replied for ``job``; a claim taken over is forgotten."""
        if reply:
            return True
        self._forget([job.id], [args[-2]])
        return False

    def _start_args(self, job: Job) -> list[Any] | None:
        """The START script's arguments for ``job``'s claim (its token second to
        last); ``None`` if this object does not hold its claim."""
        with self._claims_lock:
            token = self._claims.get(job.id)
            claimed_at = None if token is None else self._claimed_at.get(token)
        if token is None:
            return None
        keep = "0"
        if claimed_at is not None:
            lease = lease_secs_for(
                job.timeout_secs, lease_secs=self.lease_secs, default_timeout_secs=self.default_timeout
            )
            if time.monotonic() - claimed_at <= min(_FRESH_CLAIM_MAX_SECS, lease * _FRESH_CLAIM):
                keep = "1"
        return [self.prefix, *self._lease_rule, job.id, token, keep]

    def _shares_store(self, results: BaseResultBackend) -> bool:
        return isinstance(results, RedisResultBackend) and results.url == self.url and results.prefix == self.prefix

    def extend_leases(self, job_ids: Sequence[str]) -> None:
        """Renew the leases of the jobs this object still holds. While the server
        is unreachable this does nothing (the next renewal tries again) rather
        than hold up the worker's watchdog."""
        with self._claims_lock:
            owned = [(job_id, self._claims[job_id]) for job_id in job_ids if job_id in self._claims]
        if not owned:
            return
        args: list[Any] = [self.prefix, *self._lease_rule]
        for job_id, token in owned:
            args += [job_id, token]
        try:
            self._extend(args=args)
        except Exception as exc:
            if not is_transient(exc):
                raise
            self.conn.mark_down(exc, "renewing leases")
            return
        self.conn.mark_up()

    # -- reading --------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=True)
            pipe.hget(self.key("payload"), job_id)
            pipe.hget(self.key("attempts"), job_id)
            pipe.zscore(self.key("leases"), job_id)
            return pipe.execute()

        payload, attempts, leased = self.conn.run("reading a queued job", read)
        if payload is None:
            return None
        job = Job.from_bytes(payload)
        job.attempts = int(attempts or 0)
        if leased is not None:
            job.status = JobStatus.RUNNING
        return job

    def qsize(self) -> int:
        return int(self.conn.run("counting queued jobs", lambda: self.client.zcard(self.key("due"))))

    def claims_held(self) -> tuple[int, float | None]:
        def read() -> tuple[int, float | None]:
            pipe = self.client.pipeline(transaction=False)
            pipe.zcard(self.key("leases"))
            pipe.zrevrange(self.key("leases"), 0, 0, withscores=True)
            pipe.time()
            n, last, (secs, micros) = pipe.execute()
            # Lease ends are the server's time: moved onto this host's clock.
            skew = time.time() - (secs + micros / 1e6)
            return int(n), (float(last[0][1]) + skew) if last else None

        return self.conn.run("counting claimed jobs", read)

    def running(self) -> int:
        """Number of claimed jobs (running somewhere, or held by a dead worker until its lease ends)."""
        return int(self.conn.run("counting claimed jobs", lambda: self.client.zcard(self.key("leases"))))

    def clear(self) -> int:
        return int(self.conn.run("clearing the queue", lambda: self._clear(args=[self.prefix])))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            release(self.conn)


def _NO_START() -> int:
    return 0


def _log_skipped(skipped: Sequence[bytes]) -> None:
    for job_id in skipped:
        log.info("job %s was claimed by another worker meanwhile; not requeued", job_id.decode())


def _evalsha(client: Any, script: Any, args: list[Any]) -> Any:
    """One registered script's EVALSHA on ``client``'s own connection. On every
    job's path: redis-py's command machinery (and its Script's) costs about as
    much CPU as the trip. A server without the script (restarted, flushed) ran
    nothing: the script is sent again, loading it."""
    [reply] = _pipelined(client, [("EVALSHA", script.sha, 0, *args)])
    if isinstance(reply, NoScriptError):
        return script(args=args, client=client)
    if isinstance(reply, Exception):
        raise reply
    return reply


def _pack(conn: Any, commands: list[tuple[Any, ...]]) -> Any:
    """The commands in Redis's protocol: hiredis's packer when installed (redis-py's
    own converts each argument in Python first), else redis-py's."""
    if _pack_command is None:
        return conn.pack_commands(commands)
    return [b"".join([_pack_command(command) for command in commands])]


def _pipelined(client: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Send ``commands`` at once on ``client``'s own connection and read every
    reply; an error reply (e.g. a script the server lacks) is returned, not raised."""
    conn: Any = client.connection  # redis-py's Connection is untyped
    replies: list[Any] = []
    try:
        conn.send_packed_command(_pack(conn, commands))
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
    except BaseException:
        conn.disconnect()  # a reply may still be on its way: this connection is out of step
        raise
    return replies


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
