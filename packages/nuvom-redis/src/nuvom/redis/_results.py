"""The result backend: one key per finished job, sorted-set indexes by status
and by (status, task) scored by ``finished_at``, so ``list_jobs`` reads the
newest ``limit`` records in O(log N + limit) whatever the table's size."""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from nuvom.errors import SerializationError
from nuvom.job import Job, JobStatus
from nuvom.plugins.contracts import BaseResultBackend
from nuvom.redis import _scripts
from nuvom.redis._connection import Connection, acquire, is_transient, release
from nuvom.redis._settings import RedisSettings, load_redis_settings

if TYPE_CHECKING:
    from nuvom.config import Settings

__all__ = ["RedisResultBackend", "result_args"]

log = logging.getLogger("nuvom.redis")

_STATUSES = [s.value for s in JobStatus]
# Longest single block in wait(): a waiter whose wake-up was taken by another
# waiter of the same job (or lost with a restart) looks again this often.
_WAIT_BLOCK = 0.5
# list_jobs gives up trimming dangling index entries after this many rounds.
_LIST_ROUNDS = 20


def result_args(job: Job) -> list[Any]:
    """``(id, status, task, finished_at, payload)``: a job's part of a STORE call."""
    return [job.id, job.status.value, job.func_name, repr(job.finished_at or time.time()), job.to_bytes()]


class RedisResultBackend(BaseResultBackend):
    """Finished jobs in Redis, read back by any process on any host.

    ``redis`` overrides the ``NUVOM_REDIS_*`` settings (tests, embedding);
    ``ttl_secs`` overrides ``NUVOM_RESULT_TTL_SECS``.
    """

    settings_class = RedisSettings

    def __init__(
        self, settings: Settings | None = None, *, redis: RedisSettings | None = None, ttl_secs: float | None = None
    ) -> None:
        super().__init__(settings)
        self.redis_settings = redis or load_redis_settings()
        self.prefix = self.redis_settings.redis_prefix
        self.ttl_secs = ttl_secs if ttl_secs is not None else self.redis_settings.result_ttl_secs
        self.ttl_ms = 0 if self.ttl_secs is None else max(1, int(self.ttl_secs * 1000))
        self.conn: Connection = acquire(self.redis_settings)
        self.client = self.conn.client
        self._store = self.client.register_script(_scripts.STORE)
        # Index entries of expired records are trimmed at most this often (and on read).
        self._prune_every = None if self.ttl_secs is None else min(60.0, self.ttl_secs / 10)
        self._next_prune = 0.0
        self._prune_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"<RedisResultBackend {self.conn.safe_url} prefix={self.prefix!r}>"

    @property
    def url(self) -> str:
        return self.conn.url

    def key(self, job_id: str) -> str:
        return f"{self.prefix}:res:{job_id}"

    def _status_key(self, status: str) -> str:
        return f"{self.prefix}:idx:s:{status}"

    def _task_key(self, status: str, task: str) -> str:
        return f"{self.prefix}:idx:t:{status}:{task}"

    # -- writing --------------------------------------------------------------
    def store(self, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        args: list[Any] = [self.prefix, self.ttl_ms]
        for job in jobs:
            args.extend(result_args(job))
        self.conn.run(
            "storing results",
            lambda: self._store(args=args),
            patience=self.redis_settings.redis_worker_retry_secs,
        )
        self.maybe_prune()

    def maybe_prune(self) -> None:
        """Trim index entries of expired records if a TTL is set and the last trim is old enough."""
        if self._prune_every is None or time.monotonic() < self._next_prune:
            return
        if not self._prune_lock.acquire(blocking=False):
            return
        try:
            self._next_prune = time.monotonic() + self._prune_every
            self.prune()
        except Exception:
            log.exception("trimming expired results under %r failed", self.prefix)
        finally:
            self._prune_lock.release()

    def prune(self, older_than_secs: float | None = None) -> int:
        """Delete records that finished more than ``older_than_secs`` (default: the
        TTL) ago, and their index entries; returns how many index entries went."""
        age = older_than_secs if older_than_secs is not None else self.ttl_secs
        if age is None:
            return 0
        cutoff = time.time() - age

        def work() -> int:
            removed = 0
            tasks = [t.decode() for t in self.client.smembers(f"{self.prefix}:idx:tasks")]  # type: ignore[union-attr]
            for status in _STATUSES:
                skey = self._status_key(status)
                while True:
                    old = self.client.zrangebyscore(skey, "-inf", cutoff, start=0, num=1000)
                    if not old:
                        break
                    ids = [i.decode() for i in old]  # type: ignore[union-attr]
                    pipe = self.client.pipeline(transaction=False)
                    pipe.delete(*[self.key(i) for i in ids])
                    pipe.zrem(skey, *ids)
                    pipe.execute()
                    removed += len(ids)
                for task in tasks:
                    self.client.zremrangebyscore(self._task_key(status, task), "-inf", cutoff)
            return removed

        return self.conn.run("trimming expired results", work)

    def delete(self, job_id: str) -> bool:
        """Forget one result; ``True`` if there was one."""
        record = self.get_full(job_id)

        def work() -> bool:
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(self.key(job_id))
            for status in _STATUSES:
                pipe.zrem(self._status_key(status), job_id)
                if record is not None:
                    pipe.zrem(self._task_key(status, record.func_name), job_id)
            return bool(pipe.execute()[0])

        return self.conn.run("deleting a result", work)

    # -- reading --------------------------------------------------------------
    def get_full(self, job_id: str) -> Job | None:
        data = self.conn.run("reading a result", lambda: self.client.get(self.key(job_id)))
        return None if data is None else Job.from_bytes(cast(bytes, data))

    def get_many(self, job_ids: Sequence[str]) -> dict[str, Job]:
        """One ``MGET`` for all of them (``job.get()`` reads ahead with it)."""
        if not job_ids:
            return {}
        keys = [self.key(job_id) for job_id in job_ids]
        values = self.conn.run("reading results", lambda: self.client.mget(keys))
        return {
            job_id: Job.from_bytes(cast(bytes, data))
            for job_id, data in zip(job_ids, cast(list[Any], values), strict=True)
            if data is not None
        }

    def list_jobs(self, status: JobStatus | str | None = None, limit: int = 100, task: str | None = None) -> list[Job]:
        if limit <= 0:
            return []
        statuses = [JobStatus(str(getattr(status, "value", status)).upper()).value] if status is not None else _STATUSES
        keys = [self._task_key(s, task) if task is not None else self._status_key(s) for s in statuses]
        return self.conn.run("listing results", lambda: self._newest(keys, statuses, limit))

    def _newest(self, keys: list[str], statuses: list[str], limit: int) -> list[Job]:
        """The ``limit`` newest records over the index ``keys`` (of ``statuses``),
        skipping (and trimming) entries whose record has expired or now has
        another status (stored again after it expired)."""
        status_of = dict(zip(keys, statuses, strict=True))
        if self.ttl_secs is not None:
            cutoff = time.time() - self.ttl_secs
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.zremrangebyscore(key, "-inf", cutoff)
            pipe.execute()
        out: list[Job] = []
        # Each round drops the dangling entries it met, so the next one reads further.
        for _ in range(_LIST_ROUNDS):
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.zrevrange(key, 0, limit - 1, withscores=True)
            pages: list[list[tuple[bytes, float]]] = pipe.execute()
            entries = [
                (score, member.decode(), key) for key, page in zip(keys, pages, strict=True) for member, score in page
            ]
            top = heapq.nlargest(limit, entries)
            if not top:
                return []
            payloads = self.client.mget([self.key(job_id) for _, job_id, _ in top])
            out, dangling = [], []
            for (_, job_id, key), data in zip(top, payloads, strict=True):
                if data is None:
                    dangling.append((key, job_id))
                    continue
                try:
                    record = Job.from_bytes(cast(bytes, data))
                except SerializationError as exc:
                    log.error("result %s under %r is unreadable: %s", job_id, self.prefix, exc)
                    continue
                if record.status.value != status_of[key]:
                    dangling.append((key, job_id))
                    continue
                out.append(record)
            if not dangling:
                break
            pipe = self.client.pipeline(transaction=False)
            for key, job_id in dangling:
                pipe.zrem(key, job_id)
            pipe.execute()
        return out

    def count(self) -> int:
        def work() -> int:
            pipe = self.client.pipeline(transaction=False)
            for status in _STATUSES:
                pipe.zcard(self._status_key(status))
            return sum(int(n) for n in pipe.execute())

        self.maybe_prune()
        return self.conn.run("counting results", work)

    def wait(self, job_id: str, timeout: float | None = None) -> Job | None:
        """Block until the job has a record or ``timeout`` passes.

        One read if the job has a record already. Else the waiter registers
        its job id, then looks again; the script that stores the record pushes
        to ``<prefix>:wake:<id>`` for a registered id, and the waiter blocks on
        that list (BLPOP), so a wait costs a few commands however long it
        lasts, and ends within a millisecond of the store.
        """
        record = self.get_full(job_id)
        if record is not None:
            return record
        deadline = None if timeout is None else time.monotonic() + timeout
        waiters, wake = f"{self.prefix}:waiters", f"{self.prefix}:wake:{job_id}"
        self.conn.run("waiting for a result", lambda: self.client.sadd(waiters, job_id))
        try:
            while True:
                record = self.get_full(job_id)
                if record is not None:
                    return record
                block = _WAIT_BLOCK
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    block = min(block, remaining)
                try:
                    self.client.blpop([wake], timeout=max(block, 0.001))
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    self.conn.mark_down(exc, "waiting for a result")
                    time.sleep(min(block, 0.2))
        finally:
            try:
                pipe = self.client.pipeline(transaction=False)
                pipe.srem(waiters, job_id)
                pipe.delete(wake)
                pipe.execute()
            except Exception as exc:
                if not is_transient(exc):
                    raise

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            release(self.conn)
