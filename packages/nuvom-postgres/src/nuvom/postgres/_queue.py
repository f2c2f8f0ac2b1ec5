"""The job queue: rows in ``nuvom_queue``, claimed in batches with
``FOR UPDATE SKIP LOCKED``, fenced by a claim token.

A row is claimable when ``ready_at`` is past: while it waits, ``ready_at`` is
its due time; a claim sets it to the lease's end. So a job whose worker died
becomes claimable again by the same statement, through the same index, in due
order with everything else. Only a claim that started counts as an attempt: a
claim's start mark is ``started_at``, and a claim of a row whose expired claim
never started undoes that claim's attempt.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from nuvom.errors import BackendError, SerializationError
from nuvom.job import DEFAULT_QUEUE, LEASE_FACTOR, LEASE_MARGIN_SECS, Job, lease_secs_for
from nuvom.plugins.contracts import BaseJobQueue, BaseResultBackend
from nuvom.postgres._control import QueueControl
from nuvom.postgres._db import Database, acquire, release
from nuvom.postgres._listen import Wakeups
from nuvom.postgres._reads import QueueReads
from nuvom.postgres._results import PostgresResultBackend, result_arrays
from nuvom.postgres._rows import decode, enqueue_arrays, message
from nuvom.postgres._rows import unreadable as quarantined
from nuvom.postgres._schedules import PostgresSchedules
from nuvom.postgres._settings import PostgresSettings, load_postgres_settings
from nuvom.postgres._sql import bools, byteas, floats, ints, texts
from nuvom.postgres._workers import PostgresPresence

if TYPE_CHECKING:
    from nuvom.config import Settings

__all__ = ["PostgresJobQueue"]

log = logging.getLogger("nuvom.postgres")

# A job started within a tenth of its lease (and at most a second) after its
# claim keeps the claim's lease, 90% of a full lease from the start or more
# (as the SQLite and Redis queues do): the start mark then changes no indexed
# column, and the row is rewritten in place.
_FRESH_CLAIM = 0.1
_FRESH_CLAIM_MAX_SECS = 1.0
# Claim times kept by token, for _FRESH_CLAIM (older ones just get a full renewal).
_CLAIM_TIMES_MAX = 256
# With due rows all held by other claimers (about to commit), look again this soon.
_CONTENDED = 0.002
# While the listener is down, an idle claimer looks this often.
_DOWN_POLL = 0.1
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0
# A claim retries a lost connection this long before the claimer backs off and
# returns empty-handed (the worker keeps running what it holds meanwhile).
_CLAIM_PATIENCE = 1.0


def _NO_START() -> int:
    return 0


class PostgresJobQueue(PostgresPresence, QueueControl, QueueReads, BaseJobQueue, PostgresSchedules):
    """A durable queue in PostgreSQL, shared by every process on every host that
    uses the same database and schema. Safe across threads and processes. It
    keeps schedules too (``task.schedule(...)``) and queues jobs in the caller's
    own transaction (``task.delay_in(connection, ...)``).

    ``postgres`` overrides the ``NUVOM_POSTGRES_*`` settings (tests, embedding).
    """

    settings_class = PostgresSettings
    shared_between_processes = True
    supports_queues = True
    supports_unique = True
    supports_workflows = True

    def __init__(self, settings: Settings | None = None, *, postgres: PostgresSettings | None = None) -> None:
        super().__init__(settings)
        if settings is None:
            from nuvom.config import get_settings

            settings = get_settings()
        self.settings = settings
        self.postgres_settings = postgres or load_postgres_settings()
        self.db: Database = acquire(self.postgres_settings)
        self.sql = self.db.sql
        self.lease_secs = float(settings.lease_secs)
        self.default_timeout = float(settings.job_timeout_secs)
        # The lease rule (nuvom.job.lease_secs_for) with this worker's settings, in SQL.
        lease = (
            f"greatest({self.lease_secs!r}::float8, coalesce(j.timeout_secs, {self.default_timeout!r}::float8) "
            f"* {LEASE_FACTOR!r} + {LEASE_MARGIN_SECS!r})"
        )
        self._lease = lease
        self._claim_sql = self.sql.claim(lease)
        self._extend_sql = self.sql.extend(lease)
        self.claimer = f"{socket.gethostname()}:{os.getpid()}"
        # job id -> claim token of the claims this object holds: a settlement
        # only applies while the row's token is still this one.
        self._claims: dict[str, int] = {}
        self._claims_lock = threading.Lock()
        # token -> when (monotonic) its claim's lease began, at the latest.
        self._claimed_at: dict[int, float] = {}
        self._wakeups: Wakeups | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<PostgresJobQueue {self.db.safe_url} schema={self.db.schema}>"

    def _worker_patience(self) -> float:
        return self.postgres_settings.postgres_worker_retry_secs

    # -- producing ------------------------------------------------------------
    def enqueue(self, job: Job) -> None:
        """One statement (and one commit): the row and a NOTIFY for idle workers."""
        if job.flow is not None:
            self._enqueue_control([job], "queueing a job")
            return
        params = {
            "id": job.id,
            "func_name": job.func_name,
            "queue": job.queue,
            "priority": job.priority,
            "due_at": job.due_at,
            "attempts": job.attempts,
            "timeout": job.timeout_secs,
            "created_at": job.created_at,
            "payload": job.to_bytes(),
        }
        self._insert(self.sql.enqueue_one, params, "queueing a job")

    def enqueue_many(self, jobs: Sequence[Job]) -> None:
        """Every job in one statement: all of them or (on any failure) none."""
        if any(job.flow is not None for job in jobs):
            self._enqueue_control(jobs, "queueing jobs")
        elif jobs:
            self._insert(self.sql.enqueue, enqueue_arrays(jobs), "queueing jobs")

    def _insert(self, statement: str, params: dict[str, Any], what: str) -> None:
        tries = 0

        def run(conn: psycopg.Connection[Any]) -> None:
            nonlocal tries
            tries += 1
            params["sent"] = time.time()
            try:
                self.db.prepared(statement).rows(conn, params)
            except psycopg.errors.UniqueViolation:
                # A retry after a lost reply finds its own jobs queued: that is success.
                if tries == 1:
                    raise BackendError(
                        f"PostgreSQL at {self.db.safe_url}: a job with one of these ids is already queued in "
                        f"schema {self.db.schema}; job ids must be unique"
                    ) from None

        self.db.run(what, run)

    # -- claiming -------------------------------------------------------------
    def claim(self, batch_size: int) -> list[Job]:
        return self.db.run("claiming jobs", lambda conn: self._claim(conn, batch_size, 0, (DEFAULT_QUEUE,))[0])

    def pop_batch(self, batch_size: int, timeout: float | None = 0.0) -> list[Job]:
        """Claim up to ``batch_size`` due jobs, waiting up to ``timeout`` s
        (``None``: forever) for one. Waiting, it sleeps until a NOTIFY (a job
        queued or handed back anywhere), the next due time, or the safety poll
        (``NUVOM_POSTGRES_POLL_SECS``). While the server is unreachable this
        returns ``[]`` after backing off (one line logged each way): the worker
        keeps running what it holds."""
        return self._pop(batch_size, timeout, _NO_START, (DEFAULT_QUEUE,))

    def pop_batch_starting(self, batch_size: int, timeout: float | None = 0.0, *, start: int = 0) -> list[Job]:
        """:meth:`pop_batch` whose claim statement also writes the start marks of
        the first ``start`` jobs (the claim's lease already runs from now)."""
        return self._pop(batch_size, timeout, lambda: max(0, start), (DEFAULT_QUEUE,))

    def claim_batch(
        self,
        limit: int,
        timeout: float | None,
        idle: Callable[[], int],
        queues: Sequence[str] = (DEFAULT_QUEUE,),
    ) -> list[Job]:
        """:meth:`pop_batch_starting` of the jobs of ``queues``, asking ``idle()``
        right before each claim: one statement per queue, in order, each
        walking its queue's index, until ``limit`` jobs are claimed."""
        return self._pop(limit, timeout, idle, tuple(queues) or (DEFAULT_QUEUE,))

    def _listener(self) -> Wakeups:
        wakeups = self._wakeups
        if wakeups is None:
            wakeups = self._wakeups = Wakeups(self.db)
        return wakeups

    def _pop(
        self, batch_size: int, timeout: float | None, idle: Callable[[], int], queues: tuple[str, ...]
    ) -> list[Job]:
        deadline = None if timeout is None else time.monotonic() + timeout
        wakeups = None if timeout == 0 else self._listener()
        listening = wakeups is not None and self._listen(wakeups)
        pause = _BACKOFF_FIRST
        while True:
            seen = wakeups.count if wakeups is not None else 0  # read before the claim: no wake-up is missed
            try:
                jobs, due_in = self.db.run(
                    "claiming jobs",
                    lambda conn: self._claim(conn, batch_size, idle(), queues),
                    patience=_CLAIM_PATIENCE,
                )
                pause = _BACKOFF_FIRST
            except BackendError as exc:
                if not self.db.down:
                    raise
                log.debug("claiming jobs: %s", exc)  # the outage was logged once, by the connection
                jobs, due_in = [], pause
                pause = min(pause * 2, _BACKOFF_MAX)
            if jobs or wakeups is None:
                return jobs
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return []
            wait = self.postgres_settings.postgres_poll_secs if listening else _DOWN_POLL
            if due_in is not None:
                wait = min(wait, max(_CONTENDED, due_in))
            if deadline is not None:
                wait = min(wait, deadline - now)
            wakeups.wait(seen, wait)
            listening = listening or self._listen(wakeups)

    def _listen(self, wakeups: Wakeups) -> bool:
        try:
            return wakeups.ensure()
        except Exception as exc:  # not reachable now: the claims say why
            log.debug("listening for new jobs: %s", exc)
            return False

    def _claim(
        self, conn: psycopg.Connection[Any], batch_size: int, start: int, queues: Sequence[str]
    ) -> tuple[list[Job], float | None]:
        """Claimed jobs of ``queues`` (the first ``start`` start-marked), the
        first queue's first, or none and the seconds until something may be due
        (``None``: the queues are empty)."""
        token = secrets.randbits(62)
        params = {"n": batch_size, "start": start, "token": token, "by": self.claimer, "due_slack": 0.0}
        began = time.monotonic()  # the server's claim (and its lease) comes after this
        claim = self.db.prepared(self._claim_sql)
        rows: list[Any] = []
        soonest: float | None = None
        for name in queues:
            params["queue"] = name
            got = claim.rows(conn, params)
            if got and got[0][0] is None:
                due_in = got[0][6]
                if due_in is not None and (soonest is None or float(due_in) < soonest):
                    soonest = float(due_in)
                continue
            got.sort(key=lambda row: int(row[0]))
            rows += [(len(rows) + k, *row[1:]) for k, row in enumerate(got, 1)]
            if len(rows) >= batch_size:
                break
            params["n"] = batch_size - len(rows)
            params["start"] = max(0, start - len(rows))
        if not rows:
            return [], soonest
        marked: list[Job] = []
        jobs: list[Job] = []
        unreadable: list[Job] = []
        started = min(max(0, start), len(rows))
        for k, job_id, attempts, created_at, func_name, payload, _ in rows:
            try:
                job = decode(job_id, payload)
            except SerializationError as exc:
                unreadable.append(quarantined(job_id, func_name, attempts, created_at, exc, self.claimer))
                continue
            # The statement counted the claim (undone if it expires unstarted); so does mark_claimed.
            job.attempts = attempts - 1
            job.mark_claimed()
            (marked if k <= started else jobs).append(job)
        with self._claims_lock:
            claimed_at = self._claimed_at
            claimed_at[token] = began
            if len(claimed_at) > _CLAIM_TIMES_MAX:
                for old in list(claimed_at)[: _CLAIM_TIMES_MAX // 2]:
                    del claimed_at[old]
            claims = self._claims
            for job in (*marked, *jobs, *unreadable):
                claims[job.id] = token
        if unreadable:
            for job in unreadable:
                log.error("quarantined queue row: job %s (%s): %s", job.id, job.func_name, message(job))
            self._write([], [], [], unreadable, fenced=True)
        # A corrupt payload among the marked ones: others are marked in its place, so
        # that the first min(start, len(jobs)) returned are marked (pop_batch_starting).
        return self._started_first(marked, jobs, start), None

    # -- settling claims ------------------------------------------------------
    def _tokens(self, job_ids: Sequence[str]) -> list[int | None]:
        with self._claims_lock:
            get = self._claims.get
            return [get(job_id) for job_id in job_ids]

    def _forget(self, job_ids: Sequence[str], tokens: Sequence[int | None]) -> None:
        """Drop the claims settled with these tokens. A job handed back may be
        claimed again (here, under a new token) before this runs: that claim stays."""
        with self._claims_lock:
            claims = self._claims
            for job_id, token in zip(job_ids, tokens, strict=True):
                if token is not None and claims.get(job_id) == token:
                    del claims[job_id]

    def ack(self, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        tokens = self._tokens(job_ids)
        q = self.sql.queue

        def run(conn: psycopg.Connection[Any]) -> None:
            # A claim taken over since is left alone: its new holder settles it.
            conn.execute(
                f"WITH done AS (DELETE FROM {q} AS j USING unnest(%s::text[], %s::bigint[]) AS a(id, token) "
                "WHERE j.id = a.id AND j.id = ANY(%s::text[]) AND (a.token IS NULL OR j.claim_token = a.token) "
                f"RETURNING j.children), {self.sql.release} SELECT count(*) FROM rel",
                (texts(job_ids), ints(tokens), texts(job_ids)),
            )

        self.db.run("acknowledging jobs", run, patience=self._worker_patience())
        self._forget(job_ids, tokens)

    def requeue(self, jobs: Sequence[Job]) -> None:
        """Put jobs back as given, in one statement. A job whose claim was taken
        over meanwhile is left to its new claimer; running this twice (a retry
        after a lost reply) hands nothing back twice, as the first run spent the token."""
        if jobs:
            self._write((), jobs, (), (), fenced=True)

    def complete(self, jobs: Sequence[Job], results: BaseResultBackend) -> None:
        """Store outcomes and remove the jobs from the queue: in one statement,
        and only for jobs whose claim is still the one they ran under, when
        ``results`` is a :class:`PostgresResultBackend` on this database and
        schema (a completion whose claim was taken over is dropped, and the
        other run records the outcome). Otherwise: store, then acknowledge."""
        self.settle(jobs, (), (), results)

    def settle(
        self,
        finished: Sequence[Job],
        requeued: Sequence[Job],
        starting: Sequence[Job],
        results: BaseResultBackend,
    ) -> list[bool]:
        """A worker's group write in one statement, so one round trip and one
        commit: the outcomes of ``finished`` as :meth:`complete`, the hand-backs
        of ``requeued`` as :meth:`requeue` and the start marks of ``starting``
        as :meth:`mark_started`, each fenced by its claim's token."""
        if not self._shares_store(results):
            return self._settle_apart(finished, requeued, starting, results)
        marked = self._write(finished, requeued, starting, (), fenced=True)
        if finished and isinstance(results, PostgresResultBackend):
            results.maybe_prune()
        return marked

    def _write(
        self,
        finished: Sequence[Job],
        requeued: Sequence[Job],
        starting: Sequence[Job],
        quarantined: Sequence[Job],
        *,
        fenced: bool,
    ) -> list[bool]:
        done = [*finished, *quarantined]
        ids = [job.id for job in done]
        tokens = self._tokens(ids)
        back_ids = [job.id for job in requeued]
        back_tokens = self._tokens(back_ids)
        guarded = [(job, token) for job, token in zip(requeued, back_tokens, strict=True) if token is not None]
        free = [job for job, token in zip(requeued, back_tokens, strict=True) if token is None]
        mark_ids, mark_tokens, mark_keep = self._mark_args(starting)
        if not (done or guarded or free or mark_ids):
            return [True] * len(starting)
        params: dict[str, Any] = result_arrays(done, tokens) if done else {}
        if guarded:
            params.update(
                b_id=texts([job.id for job, _ in guarded]),
                b_token=ints([token for _, token in guarded]),
                b_due=floats([job.due_at for job, _ in guarded]),
                b_attempts=ints([job.attempts for job, _ in guarded]),
                b_payload=byteas([job.to_bytes() for job, _ in guarded]),
            )
        if free:
            params.update(
                g_id=texts([job.id for job in free]),
                g_func=texts([job.func_name for job in free]),
                g_queue=texts([job.queue for job in free]),
                g_priority=ints([job.priority for job in free]),
                g_due=floats([job.due_at for job in free]),
                g_attempts=ints([job.attempts for job in free]),
                g_timeout=floats([job.timeout_secs for job in free]),
                g_created=floats([job.created_at for job in free]),
                g_payload=byteas([job.to_bytes() for job in free]),
            )
        if mark_ids:
            params.update(m_id=texts(mark_ids), m_token=ints(mark_tokens), m_keep=bools(mark_keep))
        kind = ("fenced" if fenced else "plain") if done else ""
        prepared = self.db.prepared(self.sql.settle(self._lease, kind, bool(guarded), bool(free), bool(mark_ids)))

        def run(conn: psycopg.Connection[Any]) -> list[Any]:
            params["sent"] = time.time()
            return prepared.rows(conn, params)

        rows = self.db.run("settling jobs", run, patience=self._worker_patience())
        got: dict[str, set[str]] = {"d": set(), "b": set(), "m": set(), "p": set()}
        for key, job_id in rows:
            if job_id is not None:
                got[key].add(job_id)
        if done:
            self._forget(ids, tokens)
            ignored = len(finished) - len(got["d"] - {job.id for job in quarantined})
            if ignored:
                log.info("%d completion(s) ignored: their claim was taken over by another worker", ignored)
        if requeued:
            self._forget(back_ids, back_tokens)
            for job, _ in guarded:
                if job.id not in got["b"]:
                    log.info("job %s was claimed by another worker meanwhile; not requeued", job.id)
        marked = got["m"]
        held = set(mark_ids)
        lost = [job.id for job in starting if job.id in held and job.id not in marked]
        if lost:
            self._forget(lost, self._tokens(lost))
        # A job not claimed through this object has nothing to fence: it starts.
        return [job.id in marked or job.id not in held for job in starting]

    def _mark_args(self, jobs: Sequence[Job]) -> tuple[list[str], list[int], list[bool]]:
        """The start marks of the jobs this object holds: ids, tokens, and whether
        each keeps its claim's lease (started right after its claim)."""
        now = time.monotonic()
        ids: list[str] = []
        tokens: list[int] = []
        keep: list[bool] = []
        with self._claims_lock:
            held = [(job, self._claims.get(job.id)) for job in jobs]
            times = {token: self._claimed_at.get(token) for _, token in held if token is not None}
        fresh: dict[float | None, float] = {}  # timeout -> how soon after its claim a start keeps the lease
        for job, token in held:
            if token is None:
                continue
            since = times.get(token)
            timeout = job.timeout_secs
            window = fresh.get(timeout)
            if window is None:
                lease = lease_secs_for(timeout, lease_secs=self.lease_secs, default_timeout_secs=self.default_timeout)
                window = fresh[timeout] = min(_FRESH_CLAIM_MAX_SECS, lease * _FRESH_CLAIM)
            ids.append(job.id)
            tokens.append(token)
            keep.append(since is not None and now - since <= window)
        return ids, tokens, keep

    def mark_started(self, job: Job) -> bool:
        """One statement: the claim's start mark and a lease from now, fenced by
        the claim's token; committed (durable) when it returns."""
        return self._write((), (), (job,), (), fenced=True)[0]

    def _shares_store(self, results: BaseResultBackend) -> bool:
        return isinstance(results, PostgresResultBackend) and results.db is self.db

    def extend_leases(self, job_ids: Sequence[str]) -> None:
        """Renew the leases of the jobs this object still holds. While the server
        is unreachable this does nothing (the next renewal tries again) rather
        than hold up the worker's watchdog."""
        with self._claims_lock:
            owned = [(job_id, self._claims[job_id]) for job_id in job_ids if job_id in self._claims]
        if not owned:
            return
        params = {"id": texts([job_id for job_id, _ in owned]), "token": ints([token for _, token in owned])}
        try:
            self.db.run(
                "renewing leases", lambda conn: conn.execute(self._extend_sql, params), patience=_CLAIM_PATIENCE
            )
        except BackendError:
            if not self.db.down:
                raise

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._wakeups is not None:
                self._wakeups.stop()
            release(self.db)
