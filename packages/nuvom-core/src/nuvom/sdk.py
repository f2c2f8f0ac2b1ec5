"""Reading and steering jobs from Python: what the CLI uses too.

Every function works on the default app, or on the app given as ``app=``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from nuvom.app import App, default_app
from nuvom.job import TERMINAL_STATUSES, Job, JobError, JobStatus, new_job_id, validate_job_id
from nuvom.plugins.contracts import BaseJobQueue, Cursor

if TYPE_CHECKING:
    from nuvom.plugins.contracts import WorkerInfo
    from nuvom.schedule import Schedule

__all__ = [
    "RETRY_PEEK_LIMIT",
    "cancel_job",
    "cancel_schedule",
    "cancels_running_jobs",
    "dependents",
    "existing_retry",
    "get_job",
    "get_job_status",
    "get_schedule",
    "job_counts",
    "list_jobs",
    "list_schedules",
    "list_workers",
    "pause_schedule",
    "query_jobs",
    "queue_counts",
    "queue_size",
    "queued_jobs",
    "resume_schedule",
    "retry_job",
    "run_schedule_now",
]


def get_job(job_id: str, *, app: App | None = None) -> Job | None:
    """The job's current record (status, result, error, traceback, attempts,
    timings), from the results if it finished, else from the queue; ``None``
    if no backend knows it. A malformed id raises :class:`~nuvom.errors.InvalidJobId`."""
    validate_job_id(job_id)
    return (app or default_app()).get_job(job_id)


def get_job_status(job_id: str, *, app: App | None = None) -> JobStatus | None:
    """The job's status (the earlier nuvom's call); ``None`` if no backend knows it."""
    job = get_job(job_id, app=app)
    return None if job is None else job.status


#: Waiting jobs read to find an earlier retry (the queue may hold more; see existing_retry).
RETRY_PEEK_LIMIT = 10_000
_RETRY_PAGE = 200


def retry_job(job_id: str, *, force: bool = False, app: App | None = None) -> Job | None:
    """Queue a failed job again, as a new job (new id, ``retry_of`` pointing
    at the failed one) with a fresh set of retries, and return it; ``None`` if
    there is no such finished job. Only ``FAILED`` jobs are retried (else
    ``ValueError``). It goes to the failed job's queue, with its priority.

    A job is retried once: when an earlier retry of it exists
    (:func:`existing_retry`), nothing is queued and that retry is returned, so
    a retry repeated by a script, a double click or a second terminal runs the
    task once. ``force=True`` queues another one anyway. ``nuvom retry job``
    and the dashboard decide the same way through this function."""
    validate_job_id(job_id)
    app = app or default_app()
    record = app.results.get_full(job_id)
    if record is None:
        return None
    if record.status is not JobStatus.FAILED:
        raise ValueError(f"job {job_id} is {record.status.value}, not FAILED; only failed jobs are retried")
    earlier = None if force else existing_retry(job_id, app=app)
    if earlier is not None:
        return earlier
    job = Job(
        id=new_job_id(),
        func_name=record.func_name,
        task_path=record.task_path,
        args=record.args,
        kwargs=record.kwargs,
        max_retries=record.max_retries,
        retry_delay_secs=record.retry_delay_secs,
        timeout_secs=record.timeout_secs,
        timeout_policy=record.timeout_policy,
        store_result=record.store_result,
        tags=record.tags,
        created_at=time.time(),
        retry_of=record.id,
        # The queue it was meant for: a worker of "default" must not run an "emails" job.
        queue=record.queue,
        priority=record.priority,
    ).bind(app)
    app.queue.enqueue(job)
    return job


def existing_retry(job_id: str, *, app: App | None = None) -> Job | None:
    """A job an earlier :func:`retry_job` made of ``job_id``, waiting in the
    queue or finished; ``None`` if there is none (or the failed job is unknown).

    Waiting jobs are read through :func:`queued_jobs` (the queue's ``peek``, up
    to :data:`RETRY_PEEK_LIMIT`), finished ones through :func:`query_jobs` (same
    task, finished after the failed job). A retry a worker is running right now
    is not visible to either, and two retries started at the same instant in
    two processes can both queue one."""
    validate_job_id(job_id)
    app = app or default_app()
    record = app.results.get_full(job_id)
    if record is None:
        return None
    for job in queued_jobs(limit=RETRY_PEEK_LIMIT, app=app):
        if job.retry_of == job_id:
            return job.bind(app)
    before: Cursor | None = None
    while True:
        page = query_jobs(task=record.func_name, since=record.finished_at, before=before, limit=_RETRY_PAGE, app=app)
        for job in page:
            if job.retry_of == job_id:
                return job
        if len(page) < _RETRY_PAGE or page[-1].finished_at is None:
            return None
        before = (page[-1].finished_at, page[-1].id)


def list_jobs(
    status: JobStatus | str | None = None, limit: int = 100, task: str | None = None, *, app: App | None = None
) -> list[Job]:
    """Finished jobs, newest first; filter by ``status`` (``SUCCESS``/``FAILED``) and task name."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    app = app or default_app()
    return [job.bind(app) for job in app.results.list_jobs(status=_terminal(status), limit=limit, task=task)]


def queue_size(*, app: App | None = None) -> int:
    """Jobs waiting in the queue."""
    return (app or default_app()).queue.qsize()


def _terminal(status: JobStatus | str | None) -> JobStatus | None:
    if status is None:
        return None
    try:
        found = JobStatus(str(getattr(status, "value", status)).upper())
    except ValueError:
        names = ", ".join(s.value for s in TERMINAL_STATUSES)
        raise ValueError(f"unknown status {status!r}; history holds {names}") from None
    if found not in TERMINAL_STATUSES:
        raise ValueError(
            f"history holds finished jobs only (SUCCESS, FAILED); a {found.value} job is read with get_job(id)"
        )
    return found


def query_jobs(
    status: JobStatus | str | None = None,
    task: str | None = None,
    tag: str | None = None,
    since: float | None = None,
    until: float | None = None,
    before: Cursor | None = None,
    limit: int = 50,
    *,
    app: App | None = None,
) -> list[Job]:
    """A page of finished jobs, newest first, filtered by status, task, tag and
    finish time (``since <= finished_at < until``). For the next page pass
    ``before=(last.finished_at, last.id)`` of this page's last job."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    return (app or default_app()).results.query(
        status=_terminal(status), task=task, tag=tag, since=since, until=until, before=before, limit=limit
    )


def job_counts(*, app: App | None = None) -> dict[str, int]:
    """Jobs by state: ``queued``, ``retrying``, ``running`` (from the queue; a
    key the backend cannot tell is left out) and ``SUCCESS``, ``FAILED`` (stored)."""
    app = app or default_app()
    counts = dict(app.queue.counts())
    counts.update(app.results.counts())
    return counts


def queue_counts(*, app: App | None = None) -> dict[str, dict[str, int]]:
    """Jobs by named queue, then by state: ``{"emails": {"queued": 3, "retrying": 0,
    "running": 1}, ...}`` (:meth:`BaseJobQueue.queue_counts`). ``queued`` holds
    the jobs waiting for their parents (``WAITING``) too; a key the store cannot
    tell is left out, and a store without named queues answers for ``default``."""
    return (app or default_app()).queue.queue_counts()


def dependents(job_id: str, *, app: App | None = None) -> list[str]:
    """The ids of the jobs waiting for ``job_id`` to finish (workflows:
    ``job.then``, ``group(...).then``, ``depends_on=``). The store knows them
    while they wait: once released they run on their own, and their own record
    names this job among its parents (``job.flow.parents``)."""
    validate_job_id(job_id)
    return (app or default_app()).queue.dependents(job_id)


def cancels_running_jobs(*, app: App | None = None) -> bool:
    """Whether :func:`cancel_job` can stop a job a worker is running on this
    store: the store records cancel requests (:meth:`BaseJobQueue.request_cancel`).
    Without them only waiting jobs are cancelled."""
    return type((app or default_app()).queue).request_cancel is not BaseJobQueue.request_cancel


def queued_jobs(limit: int = 50, *, app: App | None = None) -> list[Job]:
    """Up to ``limit`` waiting jobs, next due first (empty where the queue backend cannot list them)."""
    return (app or default_app()).queue.peek(limit)


def cancel_job(job_id: str, *, app: App | None = None) -> Job | None:
    """Cancel a job. A waiting one is taken out of the queue before any worker
    runs it and recorded ``FAILED`` with error type ``Cancelled`` (so it shows
    in the history and can be retried); that record is returned. A running
    one (claimed by a worker) is asked to stop: async tasks are cancelled at
    their next ``await``, process-pool tasks are killed, thread tasks see
    ``current_job().cancelled`` (they cannot be stopped from outside); its
    record ends ``FAILED``, ``Cancelled``, never retried, and the job as it
    stands now (``RUNNING``) is returned. ``None``: unknown or finished, or a
    store that cannot cancel running jobs."""
    validate_job_id(job_id)
    app = app or default_app()
    job = app.queue.cancel(job_id)
    if job is not None:
        job.mark_failed(JobError(type="Cancelled", message="cancelled before it ran"), time.time())
        app.results.store([job])
        return job.bind(app)
    if not app.queue.request_cancel(job_id):
        return None
    running = app.queue.get(job_id)
    return None if running is None else running.bind(app)


def list_workers(*, app: App | None = None) -> list[WorkerInfo] | None:
    """The workers of the app's store, live ones first, then those gone (no
    heartbeat within their ``ttl_secs``) for a few minutes before they are
    dropped; ``info.is_live()`` tells them apart. ``None`` when the queue
    backend keeps no presence (:meth:`BaseJobQueue.list_workers`)."""
    return (app or default_app()).queue.list_workers()


# -- schedules ------------------------------------------------------------------
# A queue backend without schedules raises BackendError saying so. The
# scheduler is imported on first use: commands that only read jobs (`nuvom
# status` in a shell loop) do not pay for it.
def list_schedules(*, app: App | None = None) -> list[Schedule]:
    """Every schedule, ordered by key."""
    from nuvom import _scheduler

    return _scheduler.store_of((app or default_app()).queue).list_schedules()


def get_schedule(key: str, *, app: App | None = None) -> Schedule | None:
    """The schedule with this key (with next/last run, last job id), or ``None``."""
    from nuvom import _scheduler

    return _scheduler.store_of((app or default_app()).queue).get_schedule(key)


def pause_schedule(key: str, *, app: App | None = None) -> Schedule | None:
    """Stop firing the schedule until resumed; ``None`` if there is no such schedule."""
    return _set_paused(key, True, app)


def resume_schedule(key: str, *, app: App | None = None) -> Schedule | None:
    """Fire the schedule again; ticks missed while paused follow its misfire policy."""
    return _set_paused(key, False, app)


def _set_paused(key: str, paused: bool, app: App | None) -> Schedule | None:
    from nuvom import _scheduler

    store = _scheduler.store_of((app or default_app()).queue)
    found = store.set_schedule_paused(key, paused)
    store.schedules_changed()
    return found


def cancel_schedule(key: str, *, app: App | None = None) -> bool:
    """Delete the schedule (jobs it already queued stay); ``False`` if unknown."""
    from nuvom import _scheduler

    store = _scheduler.store_of((app or default_app()).queue)
    gone = store.delete_schedule(key)
    store.schedules_changed()
    return gone


def run_schedule_now(key: str, *, app: App | None = None) -> Job | None:
    """Queue one job of the schedule now, besides its ticks; ``None`` if unknown."""
    from nuvom import _scheduler

    return _scheduler.run_now(app or default_app(), key)
