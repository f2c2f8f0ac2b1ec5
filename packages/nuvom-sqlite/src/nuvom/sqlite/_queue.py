"""The job queue: rows in ``nuvom_queue``, claimed with leases.

A row is claimable when ``ready_at <= now``. While it waits, ``ready_at`` is
its due time (created, or the retry's not-before time); a claim sets it to the
lease expiry. So a job whose worker died becomes claimable again by the same
query, through the same index, in due order with everything else.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nuvom.errors import BackendError, SerializationError
from nuvom.job import DEFAULT_QUEUE, LEASE_FACTOR, LEASE_MARGIN_SECS, Job, lease_secs_for
from nuvom.plugins.contracts import BaseJobQueue, BaseResultBackend
from nuvom.sqlite._control import (
    INSERT_QUEUED,
    SQLiteJobControl,
    chunks,
    duplicate,
    insert_jobs,
    qmarks,
    queue_row,
    release,
)
from nuvom.sqlite._db import Database
from nuvom.sqlite._results import SQLiteResultBackend, insert_results, result_row
from nuvom.sqlite._schedules import SQLiteSchedules
from nuvom.sqlite._settings import SQLiteSettings, load_sqlite_settings, resolve_paths
from nuvom.sqlite._settling import decode_row, delete_claimed, requeue_rows, unreadable, write_marks
from nuvom.sqlite._workers import SQLitePresence

if TYPE_CHECKING:
    from nuvom._settings import Settings

__all__ = ["SQLiteJobQueue"]

log = logging.getLogger("nuvom.sqlite")

# The lease is core's rule (nuvom.job.lease_secs_for), written in SQL so that a
# claim and a renewal each take one statement:
#   max(NUVOM_LEASE_SECS, coalesce(timeout_secs, NUVOM_JOB_TIMEOUT_SECS) * LEASE_FACTOR + LEASE_MARGIN_SECS)

# Polling: right after work was seen the queue is looked at every
# ``_POLL_FAST`` s; once nothing has come for ``_IDLE_AFTER`` s the pause
# doubles up to ``_POLL_IDLE``. A look that finds the file unchanged (PRAGMA
# data_version) and nothing due costs a few microseconds and no lock.
_POLL_FAST = 0.001
_POLL_IDLE = 0.05
_IDLE_AFTER = 2.0

# ``attempts`` counts the runs that started: a row claimed (state 1) whose claim
# never started (no start mark) has that claim's attempt undone when it is claimed again.
_UNSTARTED = "(state = 1 AND started_at IS NULL)"
# Text columns are read as bytes and decoded here: one row whose text is not
# valid UTF-8 must be quarantined, not make every claim fail.
#
# The priorities of one queue (?1), highest first, each found with one seek of
# the claim index (a loose index scan): with them, every step below reads a
# range of that index, never the rows not yet due.
_LEVELS = (
    "WITH RECURSIVE lv(p) AS ("
    "SELECT (SELECT max(priority) FROM nuvom_queue WHERE queue = ?1 AND state < 2) "
    "UNION ALL SELECT (SELECT max(priority) FROM nuvom_queue WHERE queue = ?1 AND state < 2 AND priority < lv.p) "
    "FROM lv WHERE lv.p IS NOT NULL) "
)
# Due rows of one queue, in claim order: the levels in turn (CROSS JOIN keeps
# them the outer loop), each in index order (ready_at, then seq). No ORDER BY:
# it would sort every due row of the queue before the LIMIT; the loops' own
# order is the order (test_claims_take_higher_priority_first_then_oldest_due).
_SELECT_DUE = _LEVELS + (
    "SELECT q.seq, CAST(q.id AS BLOB), CAST(q.func_name AS BLOB), "
    "q.attempts - (q.state = 1 AND q.started_at IS NULL), q.created_at, q.payload "
    "FROM lv CROSS JOIN nuvom_queue AS q INDEXED BY nuvom_queue_claim "
    "WHERE q.queue = ?1 AND q.priority = lv.p AND q.state < 2 AND q.ready_at <= ?2 LIMIT ?3"
)
# When the next row of one queue is claimable (a due job, or a lease's end): the least
# ready_at of each level.
_NEXT_READY = _LEVELS + (
    "SELECT min((SELECT min(ready_at) FROM nuvom_queue WHERE queue = ?1 AND state < 2 AND priority = lv.p)) FROM lv"
)
# A start mark is fenced by the claim token and renews the lease from now; a job
# started within a tenth of its lease (and at most a second) after its claim
# keeps the claim's lease, 90% of a full lease from the start or more.
_FRESH_CLAIM = 0.1
_FRESH_CLAIM_MAX_SECS = 1.0
# Claim times kept by token, for _FRESH_CLAIM (older ones just get a full renewal).
_CLAIM_TIMES_MAX = 256


def _NO_START() -> int:
    return 0


_DEFAULT_QUEUES = (DEFAULT_QUEUE,)


class SQLiteJobQueue(SQLitePresence, SQLiteJobControl, BaseJobQueue, SQLiteSchedules):
    """A durable queue in a SQLite file, shared by every process that opens it.

    ``path`` overrides ``NUVOM_SQLITE_QUEUE_PATH``. Safe across threads (one
    connection each) and processes (SQLite's locks, WAL mode).
    """

    shared_between_processes = True
    supports_queues = True
    supports_unique = True
    supports_workflows = True
    settings_class = SQLiteSettings

    def __init__(self, settings: Settings | None = None, *, path: Path | str | None = None) -> None:
        super().__init__(settings)
        if settings is None:
            from nuvom._settings import load_settings

            settings = load_settings()
        self.settings = settings
        if path is None:
            path = resolve_paths(settings, load_sqlite_settings())[0]
        self.db = Database(path)
        self.lease_secs = float(settings.lease_secs)
        self.default_timeout = float(settings.job_timeout_secs)
        self.claimer = f"{socket.gethostname()}:{os.getpid()}"
        # job id -> claim token of the claims this process holds. A settlement
        # (complete, ack, requeue) only touches a row whose token still matches:
        # a claim taken over after its lease expired is not ours any more.
        self._claims: dict[str, int] = {}
        self._claims_lock = threading.Lock()
        # claim token -> when that claim was made (time.time()), the newest claims only.
        self._claimed_at: dict[int, float] = {}
        # Poll state: what the last empty look saw (thread, PRAGMA data_version of
        # that thread's connection, local write count) and when the next row is due.
        self._seen: tuple[int, int, int, tuple[str, ...]] | None = None
        self._next_ready: float | None = None
        self._last_work = 0.0
        self._local_writes = 0

    @property
    def path(self) -> Path:
        return self.db.path

    def __repr__(self) -> str:
        return f"<SQLiteJobQueue {self.path}>"

    # -- producing ------------------------------------------------------------
    def enqueue(self, job: Job) -> None:
        """Insert one job (``.delay()``): a single autocommitted statement, so the
        call costs one commit and no BEGIN/COMMIT round trips of its own; when
        it returns the row is committed. A workflow job is queued in a
        transaction that also looks at its parents (:func:`insert_jobs`)."""
        if job.flow is not None:
            self._enqueue_held((job,))
            return
        try:
            self.db.write_one(INSERT_QUEUED, queue_row(job), "queueing a job")
        except BackendError as exc:
            raise duplicate(exc, self.path) from None
        self._local_writes += 1

    def enqueue_many(self, jobs: Sequence[Job]) -> None:
        """Insert every job in one transaction (``.map()``)."""
        if not jobs:
            return
        if any(job.flow is not None for job in jobs):
            self._enqueue_held(jobs)
            return
        rows = [queue_row(job) for job in jobs]
        try:
            with self.db.write("queueing jobs") as conn:
                conn.executemany(INSERT_QUEUED, rows)
        except BackendError as exc:
            raise duplicate(exc, self.path) from None
        self._local_writes += 1

    def _enqueue_held(self, jobs: Sequence[Job]) -> None:
        try:
            with self.db.write("queueing jobs") as conn:
                insert_jobs(conn, jobs)
        except BackendError as exc:
            raise duplicate(exc, self.path) from None
        self._local_writes += 1

    # -- claiming -------------------------------------------------------------
    def claim(self, batch_size: int) -> list[Job]:
        return self._look_and_claim(batch_size, _NO_START, _DEFAULT_QUEUES)

    def _look_and_claim(self, batch_size: int, idle: Callable[[], int], queues: Sequence[str]) -> list[Job]:
        now = time.time()
        # A read first: finding nothing due must not take the write lock.
        first = self.db.read(lambda c: self._next_ready_in(c, queues))
        if first is None or first > now:
            self._next_ready = first
            return []
        return self._claim(batch_size, now, idle(), queues)

    @staticmethod
    def _next_ready_in(conn: sqlite3.Connection, queues: Sequence[str]) -> float | None:
        times = [t for name in queues if (t := conn.execute(_NEXT_READY, (name,)).fetchone()[0]) is not None]
        return min(times) if times else None

    def _claim(self, batch_size: int, now: float, start: int = 0, queues: Sequence[str] = _DEFAULT_QUEUES) -> list[Job]:
        token = secrets.randbits(62)

        def claim(conn: sqlite3.Connection) -> tuple[list[Any], int]:
            # The first queue's due jobs first; the next queue only fills what is left.
            rows = conn.execute(_SELECT_DUE, (queues[0], now, batch_size)).fetchall()
            for name in queues[1:]:
                if len(rows) >= batch_size:
                    break
                rows += conn.execute(_SELECT_DUE, (name, now, batch_size - len(rows))).fetchall()
            if not rows:
                return rows, 0
            conn.execute(
                f"UPDATE nuvom_queue SET state = 1, attempts = attempts + 1 - {_UNSTARTED}, started_at = NULL, "
                "claim_token = ?, claimed_by = ?, "
                "ready_at = ? + max(?, coalesce(timeout_secs, ?) * ? + ?) "
                f"WHERE seq IN ({qmarks(len(rows))})",
                (
                    token,
                    self.claimer,
                    now,
                    self.lease_secs,
                    self.default_timeout,
                    LEASE_FACTOR,
                    LEASE_MARGIN_SECS,
                    *(r[0] for r in rows),
                ),
            )
            started = min(max(0, start), len(rows))  # the first rows are the ones marked
            if started:
                # The start marks of the jobs for idle threads, in the claim's own
                # transaction (pop_batch_starting); the lease just set runs from now.
                conn.execute(
                    f"UPDATE nuvom_queue SET started_at = ? WHERE seq IN ({qmarks(started)})",
                    (now, *(r[0] for r in rows[:started])),
                )
            return rows, started

        rows, started = self.db.combined(claim, "claiming jobs")
        if not rows:
            return []
        # Decoded after the commit: the write lock is held for SQL only.
        marked: list[Job] = []
        jobs: list[Job] = []
        corrupt: list[tuple[int, Job]] = []
        for i, (seq, raw_id, raw_name, attempts, created_at, payload) in enumerate(rows):
            try:
                job = decode_row(raw_id, raw_name, payload)
            except SerializationError as exc:
                corrupt.append(
                    (seq, unreadable(seq, raw_id, raw_name, attempts, created_at, payload, exc, self.claimer))
                )
                continue
            job.attempts = attempts
            job.mark_claimed()
            (marked if i < started else jobs).append(job)
        if corrupt:
            self._quarantine(corrupt, token)
        with self._claims_lock:
            claims = self._claims
            for job in (*marked, *jobs):
                claims[job.id] = token
            claimed_at = self._claimed_at
            claimed_at[token] = now
            if len(claimed_at) > _CLAIM_TIMES_MAX:
                for old in list(claimed_at)[: _CLAIM_TIMES_MAX // 2]:
                    del claimed_at[old]
        # The marked jobs come first. A marked row that could not be decoded was
        # quarantined: the next ones are marked on their own, so that the first
        # min(start, len) jobs returned are exactly the started ones.
        return self._started_first(marked, jobs, start)

    def _quarantine(self, rows: list[tuple[int, Job]], token: int) -> None:
        """Move rows that cannot be decoded out of the queue, into this file's
        results as FAILED jobs whose error gives the reason and whose result
        keeps the raw row: no worker could ever run them, and nothing is lost."""
        for _seq, job in rows:
            log.error(
                "quarantined queue row: job %s (%s): %s", job.id, job.func_name, job.error.message if job.error else ""
            )
        with self.db.write("quarantining unreadable jobs") as conn:
            for seq, job in rows:
                cur = conn.execute(
                    "DELETE FROM nuvom_queue WHERE seq = ? AND claim_token = ? RETURNING awaited", (seq, token)
                )
                deleted = cur.fetchone()
                if deleted is not None:
                    insert_results(conn, [result_row(job)])
                    if deleted[0]:
                        # Awaited, so its id is a valid one: the record's. Its jobs learn it failed.
                        release(conn, [job.id])

    def pop_batch(self, batch_size: int, timeout: float | None = 0.0) -> list[Job]:
        return self._pop(batch_size, timeout, _NO_START, _DEFAULT_QUEUES)

    def pop_batch_starting(self, batch_size: int, timeout: float | None = 0.0, *, start: int = 0) -> list[Job]:
        """:meth:`pop_batch` whose first ``start`` jobs are start-marked by the
        claim's own transaction (one statement more in it, not one commit each)."""
        return self._pop(batch_size, timeout, lambda: start, _DEFAULT_QUEUES)

    def claim_batch(
        self,
        limit: int,
        timeout: float | None,
        idle: Callable[[], int],
        queues: Sequence[str] = (DEFAULT_QUEUE,),
    ) -> list[Job]:
        """:meth:`pop_batch_starting` of ``queues``, asking ``idle()`` right before
        each claim transaction: the first queue's due jobs first (highest
        priority, then oldest due), the next queue's only to fill the batch."""
        return self._pop(limit, timeout, idle, tuple(queues))

    def _pop(
        self, batch_size: int, timeout: float | None, idle: Callable[[], int], queues: tuple[str, ...]
    ) -> list[Job]:
        """Claim up to ``batch_size`` due jobs, waiting up to ``timeout`` s.

        Polls, because another process cannot wake this one; but a poll that
        finds the file unchanged since the last empty look, and nothing due
        yet, reads one counter and returns, so polling every millisecond
        while busy costs little and an idle worker backs off to 20 looks a second.
        """
        jobs = self._poll(batch_size, idle, queues)
        if jobs or timeout == 0:
            return jobs
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return []
            idle_for = now - self._last_work
            if idle_for < _IDLE_AFTER:
                pause = _POLL_FAST
            else:
                pause = min(_POLL_IDLE, _POLL_FAST * 2 ** min(16.0, idle_for - _IDLE_AFTER))
            next_ready = self._next_ready
            if next_ready is not None:
                pause = min(pause, max(0.0, next_ready - time.time()))
            if deadline is not None:
                pause = min(pause, deadline - now)
            time.sleep(pause)
            jobs = self._poll(batch_size, idle, queues)
            if jobs:
                return jobs

    def _poll(self, batch_size: int, idle: Callable[[], int], queues: tuple[str, ...]) -> list[Job]:
        seen = (threading.get_ident(), self.db.data_version(), self._local_writes, queues)
        next_ready = self._next_ready
        if seen == self._seen and (next_ready is None or next_ready > time.time()):
            return []
        jobs = self._look_and_claim(batch_size, idle, queues)
        if jobs:
            self._last_work = time.monotonic()
        else:
            # Until the file changes or the next row comes due, there is
            # nothing to look for.
            self._seen = seen
        return jobs

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
        tokens = self._tokens(job_ids)
        plain = [job_id for job_id, token in zip(job_ids, tokens, strict=True) if token is None]
        pairs = [(job_id, token) for job_id, token in zip(job_ids, tokens, strict=True) if token is not None]
        by_token: dict[int, list[str]] = {}
        for job_id, token in pairs:
            by_token.setdefault(token, []).append(job_id)
        with self.db.write("acknowledging jobs") as conn:
            # A claim taken over since is left alone: its new holder settles it.
            awaited: list[str] = []
            for token, ids in by_token.items():
                for chunk in chunks(ids):
                    cur = conn.execute(
                        f"DELETE FROM nuvom_queue WHERE id IN ({qmarks(len(chunk))}) AND claim_token = ? "
                        "RETURNING id, awaited",
                        (*chunk, token),
                    )
                    awaited.extend(row[0] for row in cur.fetchall() if row[1])
            for chunk in chunks(plain):
                cur = conn.execute(
                    f"DELETE FROM nuvom_queue WHERE id IN ({qmarks(len(chunk))}) RETURNING id, awaited", chunk
                )
                awaited.extend(row[0] for row in cur.fetchall() if row[1])
            released = release(conn, awaited) if awaited else 0
        self._forget(job_ids, tokens)
        if released:
            self._local_writes += 1

    def requeue(self, jobs: Sequence[Job]) -> None:
        """Put jobs back as given. A job whose claim was taken over meanwhile
        is left to its new claimer."""
        ids = [job.id for job in jobs]
        tokens = self._tokens(ids)
        rows = self._requeue_rows(jobs, tokens)
        with self.db.write("requeueing jobs") as conn:
            requeue_rows(conn, *rows)
        self._forget(ids, tokens)
        self._local_writes += 1

    def complete(self, jobs: Sequence[Job], results: BaseResultBackend) -> None:
        """Store outcomes and remove the jobs from the queue.

        When ``results`` is a :class:`SQLiteResultBackend` on this file, both
        happen in one transaction, and only for jobs whose claim is still the
        one they ran under: a completion whose claim was taken over (its lease
        ran out and another worker claimed the job) is dropped, and the other
        run records the outcome. So each job is recorded exactly once. With
        results elsewhere: store, then acknowledge (a crash in between re-runs
        the job).
        """
        self.settle(jobs, (), (), results)

    def settle(
        self,
        finished: Sequence[Job],
        requeued: Sequence[Job],
        starting: Sequence[Job],
        results: BaseResultBackend,
    ) -> list[bool]:
        """A worker's group write in one transaction (when the results share
        this file): the outcomes of ``finished`` as :meth:`complete`, the
        hand-backs of ``requeued`` as :meth:`requeue` and the start marks of
        ``starting`` as :meth:`mark_started`, each fenced by its claim. A
        handful of statements for the whole group, not a few per job."""
        if not self._shares_file(results):
            return self._settle_apart(finished, requeued, starting, results)
        assert isinstance(results, SQLiteResultBackend)
        rows = [result_row(job) for job in finished]
        ids = [job.id for job in finished]
        tokens = self._tokens(ids)
        back_ids = [job.id for job in requeued]
        back_tokens = self._tokens(back_ids)
        back = self._requeue_rows(requeued, back_tokens) if requeued else None
        marks = self._mark_groups(starting) if starting else None

        def write(conn: sqlite3.Connection) -> tuple[list[str], int, set[str]]:
            kept: list[str] = []
            released = 0
            if finished:
                kept, released = delete_claimed(conn, finished, tokens)
                insert_results(conn, rows if len(kept) == len(rows) else [r for r in rows if r[0] in set(kept)])
            if back is not None:
                requeue_rows(conn, *back)
            return kept, released, set() if marks is None else write_marks(conn, marks)

        kept, released, marked = self.db.combined(write, "settling jobs")
        if finished:
            self._forget(ids, tokens)
            if released:
                self._local_writes += 1  # this process's pollers look again
            if len(kept) != len(rows):
                log.info(
                    "%d completion(s) ignored: their claim was taken over by another worker", len(rows) - len(kept)
                )
        if requeued:
            self._forget(back_ids, back_tokens)
            self._local_writes += 1
        started = [job.id in marked for job in starting]
        if not all(started) and marks:
            lost = {job_id: token for (_, token, _), ids in marks.items() for job_id in ids if job_id not in marked}
            self._forget(list(lost), list(lost.values()))
        if finished:
            results.maybe_prune()
        return started

    def _requeue_rows(
        self, jobs: Sequence[Job], tokens: Sequence[int | None]
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Rows for :func:`_requeue`: jobs still claimed here (guarded by their
        claim's token), and jobs this object never claimed (written as given)."""
        guarded, free = [], []
        for job, token in zip(jobs, tokens, strict=True):
            if token is None:
                free.append((*queue_row(job), job.unique_key))
            else:
                guarded.append((job.due_at, job.attempts, job.to_bytes(), job.id, token))
        return guarded, free

    def _mark_groups(self, jobs: Sequence[Job]) -> dict[tuple[str, int, float], list[str]]:
        """The start marks of ``jobs`` grouped into statements: (statement kind,
        claim token, lease seconds) -> ids; jobs this object does not hold are left out."""
        now = time.time()
        groups: dict[tuple[str, int, float], list[str]] = {}
        with self._claims_lock:
            claims, claimed_at = self._claims, self._claimed_at
            held = [(job, claims.get(job.id)) for job in jobs]
            times = {token: claimed_at.get(token) for _, token in held if token is not None}
        for job, token in held:
            if token is None:
                continue
            lease = lease_secs_for(
                job.timeout_secs, lease_secs=self.lease_secs, default_timeout_secs=self.default_timeout
            )
            since = times.get(token)
            fresh = since is not None and now - since <= min(_FRESH_CLAIM_MAX_SECS, lease * _FRESH_CLAIM)
            groups.setdefault(("fresh" if fresh else "renew", token, 0.0 if fresh else lease), []).append(job.id)
        return groups

    def _shares_file(self, results: BaseResultBackend) -> bool:
        return isinstance(results, SQLiteResultBackend) and results.path == self.path

    def extend_leases(self, job_ids: Sequence[str]) -> None:
        now = time.time()
        with self._claims_lock:
            owned = [(job_id, self._claims[job_id]) for job_id in job_ids if job_id in self._claims]
        if not owned:
            return
        with self.db.write("renewing leases") as conn:
            conn.executemany(
                "UPDATE nuvom_queue SET ready_at = ? + max(?, coalesce(timeout_secs, ?) * ? + ?) "
                "WHERE id = ? AND claim_token = ?",
                [
                    (
                        now,
                        self.lease_secs,
                        self.default_timeout,
                        LEASE_FACTOR,
                        LEASE_MARGIN_SECS,
                        job_id,
                        token,
                    )
                    for job_id, token in owned
                ],
            )

    def mark_started(self, job: Job) -> bool:
        """One statement: the claim's start mark and a lease from now. A WAL
        commit with ``synchronous=NORMAL`` is in the OS's hands when it returns,
        so the mark survives a SIGKILL of this process (not a power cut)."""
        groups = self._mark_groups([job])
        if not groups:
            return True  # not claimed through this object: nothing to fence
        marked = self.db.combined(lambda conn: write_marks(conn, groups), "marking a job started", one_statement=True)
        if job.id in marked:
            return True
        self._forget([job.id], [token for (_, token, _), ids in groups.items() if job.id in ids])
        return False

    def close(self) -> None:
        self.db.close()
