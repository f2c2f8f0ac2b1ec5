"""Reading and steering jobs from Python: what the CLI uses too.

Every function works on the default app, or on the app given as ``app=``.
"""

from __future__ import annotations

import time

from nuvom import _scheduler
from nuvom.app import App, default_app
from nuvom.job import TERMINAL_STATUSES, Job, JobStatus, new_job_id, validate_job_id
from nuvom.schedule import Schedule

__all__ = [
    "cancel_schedule",
    "get_job",
    "get_job_status",
    "get_schedule",
    "list_jobs",
    "list_schedules",
    "pause_schedule",
    "queue_size",
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


def retry_job(job_id: str, *, app: App | None = None) -> Job | None:
    """Queue a failed job again, as a new job (new id, ``retry_of`` pointing
    at the failed one) with a fresh set of retries. Returns the new job, or
    ``None`` if there is no such finished job. Only ``FAILED`` jobs are retried."""
    validate_job_id(job_id)
    app = app or default_app()
    record = app.results.get_full(job_id)
    if record is None:
        return None
    if record.status is not JobStatus.FAILED:
        raise ValueError(f"job {job_id} is {record.status.value}, not FAILED; only failed jobs are retried")
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
    ).bind(app)
    app.queue.enqueue(job)
    return job


def list_jobs(
    status: JobStatus | str | None = None, limit: int = 100, task: str | None = None, *, app: App | None = None
) -> list[Job]:
    """Finished jobs, newest first; filter by ``status`` (``SUCCESS``/``FAILED``) and task name."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if status is not None:
        try:
            status = JobStatus(str(getattr(status, "value", status)).upper())
        except ValueError:
            names = ", ".join(s.value for s in TERMINAL_STATUSES)
            raise ValueError(f"unknown status {status!r}; history holds {names}") from None
        if status not in TERMINAL_STATUSES:
            raise ValueError(
                f"history holds finished jobs only (SUCCESS, FAILED); a {status.value} job is read with get_job(id)"
            )
    app = app or default_app()
    return [job.bind(app) for job in app.results.list_jobs(status=status, limit=limit, task=task)]


def queue_size(*, app: App | None = None) -> int:
    """Jobs waiting in the queue."""
    return (app or default_app()).queue.qsize()


# -- schedules ------------------------------------------------------------------
# A queue backend without schedules raises BackendError saying so.
def list_schedules(*, app: App | None = None) -> list[Schedule]:
    """Every schedule, ordered by key."""
    return _scheduler.store_of((app or default_app()).queue).list_schedules()


def get_schedule(key: str, *, app: App | None = None) -> Schedule | None:
    """The schedule with this key (with next/last run, last job id), or ``None``."""
    return _scheduler.store_of((app or default_app()).queue).get_schedule(key)


def pause_schedule(key: str, *, app: App | None = None) -> Schedule | None:
    """Stop firing the schedule until resumed; ``None`` if there is no such schedule."""
    return _set_paused(key, True, app)


def resume_schedule(key: str, *, app: App | None = None) -> Schedule | None:
    """Fire the schedule again; ticks missed while paused follow its misfire policy."""
    return _set_paused(key, False, app)


def _set_paused(key: str, paused: bool, app: App | None) -> Schedule | None:
    store = _scheduler.store_of((app or default_app()).queue)
    found = store.set_schedule_paused(key, paused)
    store.schedules_changed()
    return found


def cancel_schedule(key: str, *, app: App | None = None) -> bool:
    """Delete the schedule (jobs it already queued stay); ``False`` if unknown."""
    store = _scheduler.store_of((app or default_app()).queue)
    gone = store.delete_schedule(key)
    store.schedules_changed()
    return gone


def run_schedule_now(key: str, *, app: App | None = None) -> Job | None:
    """Queue one job of the schedule now, besides its ticks; ``None`` if unknown."""
    return _scheduler.run_now(app or default_app(), key)
