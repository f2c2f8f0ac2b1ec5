"""The job queue: payloads in hashes, per named queue a sorted set of ready
jobs (by priority, then arrival), one of delayed jobs (by due time) and one of
lease expiries, and one Lua script per step (see ``_scripts`` and ``_lua``).

A claim takes ready jobs of the queues it serves, the first queue's first,
moves them to the queue's lease set scored by the lease's end and gives them
the claim's token. The claim script first moves jobs whose lease ran out and
delayed jobs whose time came into the ready sets, so a dead worker's jobs are
found by the same step, and delayed jobs become due without anyone polling
them one by one.

Only a claim that started counts as an attempt: :meth:`RedisJobQueue.mark_started`
puts the job in ``<prefix>:q:started`` (fenced by its token), and the claim script
undoes the attempt of an expired claim that is not there.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nuvom.errors import BackendError
from nuvom.job import DEFAULT_QUEUE, LEASE_FACTOR, LEASE_MARGIN_SECS, Job, JobStatus, lease_secs_for
from nuvom.plugins.contracts import BaseJobQueue, BaseResultBackend
from nuvom.redis import _scripts
from nuvom.redis._claiming import RedisClaims
from nuvom.redis._connection import Connection, acquire, evalsha, is_transient, pipelined, release
from nuvom.redis._control import RedisJobControl
from nuvom.redis._lua import extras_of
from nuvom.redis._results import RedisResultBackend, result_args
from nuvom.redis._schedules import RedisSchedules
from nuvom.redis._settings import RedisSettings, load_redis_settings
from nuvom.redis._workers import RedisPresence

from redis.exceptions import NoScriptError

if TYPE_CHECKING:
    from nuvom.config import Settings

__all__ = ["RedisJobQueue"]

log = logging.getLogger("nuvom.redis")

# A job started within a tenth of its lease (and at most a second) after its
# claim keeps the claim's lease, 90% of a full lease from the start or more
# (as the SQLite queue does): the start mark then writes only the mark.
_FRESH_CLAIM = 0.1
_FRESH_CLAIM_MAX_SECS = 1.0


class RedisJobQueue(RedisPresence, RedisJobControl, RedisClaims, BaseJobQueue, RedisSchedules):
    """A durable queue in Redis, shared by every process on every host that uses
    the same URL and prefix. Safe across threads and processes. It keeps
    schedules too (``task.schedule(...)``, see ``_schedules``).

    ``redis`` overrides the ``NUVOM_REDIS_*`` settings (tests, embedding).
    """

    settings_class = RedisSettings

    shared_between_processes = True
    supports_queues = True
    supports_unique = True
    supports_workflows = True

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
        self._enqueue_unique = script(_scripts.ENQUEUE_UNIQUE)
        self._claim = script(_scripts.CLAIM)
        self._ack = script(_scripts.ACK)
        self._requeue = script(_scripts.REQUEUE)
        self._extend = script(_scripts.EXTEND)
        self._clear = script(_scripts.CLEAR)
        self._complete = script(_scripts.COMPLETE)
        self._start = script(_scripts.START)
        self._init_schedules()
        self._init_control()
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

    def key(self, name: str, queue: str = DEFAULT_QUEUE) -> str:
        """The key ``name`` (of ``queue``, for the keys kept per named queue)."""
        if queue == DEFAULT_QUEUE:
            return f"{self.prefix}:q:{name}"
        return f"{self.prefix}:q:{name}:{queue}"

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
            args.append(extras_of(job))
        tries = [0]

        def run() -> Any:
            tries[0] += 1
            return evalsha(self.conn.own(), self._enqueue, args)

        dup = self.conn.run("queueing jobs", run)
        # A retry after a lost reply finds its own jobs already queued: that is success.
        if dup and tries[0] == 1:
            raise BackendError(
                f"Redis at {self.conn.safe_url}: job id(s) {', '.join(d.decode() for d in dup[:3])} already "
                f"queued under prefix {self.prefix!r}; job ids must be unique (the others were queued)"
            )

    def enqueue_unique(self, job: Job) -> str:
        """One script: queue ``job`` unless a job still in the queue holds
        ``job.unique_key`` (``HSETNX``-like on ``<prefix>:q:unique``); the holder's id."""
        assert job.unique_key is not None
        args: list[Any] = [self.prefix, job.unique_key, job.id, repr(job.due_at - time.time()), job.to_bytes()]
        args += [repr(job.timeout_secs or 0), job.attempts, extras_of(job)]
        holder = self.conn.run("queueing a unique job", lambda: evalsha(self.conn.own(), self._enqueue_unique, args))
        return str(holder.decode() if isinstance(holder, bytes) else holder)

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
            args += [job.queue, job.priority]
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
                return [evalsha(client, script, args)]
            # Plain EVALSHAs on this thread's connection: a redis-py pipeline of
            # registered scripts would first ask whether the server has them
            # (SCRIPT EXISTS, one more round trip) and check a pool connection out.
            replies = pipelined(client, [("EVALSHA", script.sha, 0, *args) for script, args in commands])
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
        return [self.prefix, *self._lease_rule, job.queue, job.id, token, keep]

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
            pipe.hexists(self.key("token"), job_id)
            pipe.hexists(self.key("blockers"), job_id)
            return pipe.execute()

        payload, attempts, claimed, blocked = self.conn.run("reading a queued job", read)
        if payload is None:
            return None
        job = Job.from_bytes(payload)
        job.attempts = int(attempts or 0)
        if claimed:
            job.status = JobStatus.RUNNING
        elif job.status is JobStatus.WAITING and not blocked:
            job.status = JobStatus.PENDING  # released: its parents left the queue
        return job

    def clear(self) -> int:
        return int(self.conn.run("clearing the queue", lambda: self._clear(args=[self.prefix])))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            release(self.conn)


def _log_skipped(skipped: Sequence[bytes]) -> None:
    for job_id in skipped:
        log.info("job %s was claimed by another worker meanwhile; not requeued", job_id.decode())
