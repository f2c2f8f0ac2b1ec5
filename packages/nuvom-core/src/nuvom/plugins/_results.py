"""The result backend's contract: :class:`BaseResultBackend`. Re-exported by
:mod:`nuvom.plugins.contracts`, the page a plugin author reads first."""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nuvom._legacy_results import MISSING, legacy_record
from nuvom._polling import Poller
from nuvom.job import TERMINAL_STATUSES, Job, JobError, JobStatus

if TYPE_CHECKING:
    from nuvom.config import Settings

__all__ = ["BaseResultBackend", "Cursor"]


#: ``(finished_at, job id)`` of the last job of a page: where the next page starts.
Cursor = tuple[float, str]


class BaseResultBackend(abc.ABC):
    """Where finished jobs are recorded: status, result, error, attempts, timings.

    Records are :class:`~nuvom.job.Job` objects in a terminal status
    (``SUCCESS`` or ``FAILED``). :meth:`store` is the only write; the seeds'
    ``set_result`` / ``set_error`` are thin helpers over it.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings

    @abc.abstractmethod
    def store(self, jobs: Sequence[Job]) -> None:
        """Persist finished jobs, replacing any earlier record with the same id."""

    @abc.abstractmethod
    def get_full(self, job_id: str) -> Job | None:
        """Return the stored record of a finished job, or ``None``."""

    @abc.abstractmethod
    def list_jobs(self, status: JobStatus | str | None = None, limit: int = 100, task: str | None = None) -> list[Job]:
        """Finished jobs, newest (``finished_at``) first, optionally filtered."""

    # -- conveniences over the three methods above ----------------------------
    def set_result(
        self,
        job: Job | str | None = None,
        *positional: Any,
        result: Any = MISSING,
        job_id: str | None = None,
        func_name: str | None = None,
        **meta: Any,
    ) -> None:
        """Record ``job`` as succeeded with ``result``: ``set_result(job, result)``.

        The earlier nuvom's call is accepted too: ``set_result(job_id,
        func_name, result, *, args=None, kwargs=None, retries_left=None,
        attempts=None, created_at=None, completed_at=None)`` records a job of
        that id with those fields."""
        record, value = legacy_record("set_result", "result", job, positional, result, job_id, func_name, meta)
        record.status, record.result, record.error = JobStatus.SUCCESS, value, None
        self.store([record])

    def set_error(
        self,
        job: Job | str | None = None,
        *positional: Any,
        error: Any = MISSING,
        job_id: str | None = None,
        func_name: str | None = None,
        **meta: Any,
    ) -> None:
        """Record ``job`` as failed with ``error`` (an exception or a
        :class:`~nuvom.job.JobError`): ``set_error(job, error)``; or, as the
        earlier nuvom, ``set_error(job_id, func_name, error, *, args=...,
        kwargs=..., retries_left=..., attempts=..., created_at=...,
        completed_at=...)``."""
        record, value = legacy_record("set_error", "error", job, positional, error, job_id, func_name, meta)
        if isinstance(value, BaseException):
            value = JobError.from_exception(value)
        elif not isinstance(value, JobError):
            value = JobError(type="Error", message=str(value))
        record.status, record.error = JobStatus.FAILED, value
        self.store([record])

    def get_many(self, job_ids: Sequence[str]) -> dict[str, Job]:
        """The stored records of those of ``job_ids`` that have one, by id.

        The default reads each with :meth:`get_full`. A backend that reads many
        records in one round trip overrides it, and ``job.get()`` then reads
        the results of a process's jobs in batches: a loop of ``get()`` over
        many jobs costs a round trip per batch, not one per job
        (:mod:`nuvom._gather`)."""
        found: dict[str, Job] = {}
        for job_id in job_ids:
            record = self.get_full(job_id)
            if record is not None:
                found[job_id] = record
        return found

    def get_result(self, job_id: str) -> Any:
        record = self.get_full(job_id)
        return None if record is None else record.result

    def get_error(self, job_id: str) -> JobError | None:
        record = self.get_full(job_id)
        return None if record is None else record.error

    def wait(self, job_id: str, timeout: float | None = None) -> Job | None:
        """Block until the job has a record or ``timeout`` passes (``None``: forever)."""
        return Poller(0.002, 0.1).until(lambda: self.get_full(job_id), timeout)

    async def wait_async(self, job_id: str, timeout: float | None = None) -> Job | None:
        """:meth:`wait` for ``async`` callers (``await job.aget()``): must not block
        the event loop. The default looks with :meth:`get_full` in a thread,
        backing off from 2 ms to 100 ms, so a waiting job holds no thread
        between looks; a backend that can be told when a job is stored
        should override it."""
        import asyncio

        deadline = None if timeout is None else time.monotonic() + timeout
        interval = 0.002
        while True:
            record = await asyncio.to_thread(self.get_full, job_id)
            if record is not None:
                return record
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            await asyncio.sleep(interval if left is None else min(interval, left))
            interval = min(interval * 2, 0.1)

    def count(self) -> int:
        """Number of stored records (backends should override with a cheap count)."""
        return len(self.list_jobs(limit=2**62))

    # -- looking (dashboards, the CLI) ----------------------------------------
    # Optional: the defaults read through list_jobs(); backends override them
    # where their store answers faster.
    def counts(self) -> dict[str, int]:
        """Number of stored records by status: ``{"SUCCESS": n, "FAILED": m}``."""
        return {status.value: len(self.list_jobs(status=status, limit=2**62)) for status in TERMINAL_STATUSES}

    def query(
        self,
        status: JobStatus | str | None = None,
        task: str | None = None,
        tag: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before: Cursor | None = None,
        limit: int = 50,
    ) -> list[Job]:
        """Finished jobs, newest first (by ``finished_at``, then id), filtered by
        status, task name, tag and finish time (``since <= finished_at < until``).

        Pages are keyset-paginated: pass the ``(finished_at, id)`` of the last
        job of a page as ``before`` to get the next page, so reading page 1000
        costs what page 1 does on a backend with an index on ``finished_at``.
        """
        wanted = None if status is None else JobStatus(str(getattr(status, "value", status)).upper())
        window = max(limit * 4, 100)
        while True:
            records = self.list_jobs(status=wanted, limit=window, task=task)
            out = [job for job in records if _matches(job, tag, since, until, before)]
            out.sort(key=_cursor_of, reverse=True)
            if len(out) >= limit or len(records) < window:
                return out[:limit]
            window *= 4

    def close(self) -> None:
        """Release connections and files."""


def _cursor_of(job: Job) -> Cursor:
    return (job.finished_at or 0.0, job.id)


def _matches(job: Job, tag: str | None, since: float | None, until: float | None, before: Cursor | None) -> bool:
    finished = job.finished_at or 0.0
    if tag is not None and tag not in job.tags:
        return False
    if since is not None and finished < since:
        return False
    if until is not None and finished >= until:
        return False
    return before is None or (finished, job.id) < before
